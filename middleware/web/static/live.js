// Keeps a page's #live block current without reloading the page: every 10 s the same
// address is asked for with "X-Fragment: 1", and the server answers with the block only.
// Nothing is replaced while a person is typing in one of its forms. When the session has
// ended the server answers with a redirect to the login page: the page is loaded again,
// which shows it, rather than pasting the login form into the block.
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  var seconds = Number(live.dataset.refresh || 10);
  setInterval(function () {
    var active = document.activeElement;
    if (active && live.contains(active) && active.tagName === "INPUT") return;
    fetch(window.location.href, {
      headers: { "X-Fragment": "1" }, credentials: "same-origin", redirect: "manual"
    })
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403) {
          window.location.reload();
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) live.innerHTML = html; })
      .catch(function () {});
  }, seconds * 1000);
})();
