"""TLS for the links to and from the LIS and the analysers (D5): contexts from the
configuration, with the peer's certificate checked, and the addresses a server takes
connections from."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from middleware.settings import InstrumentConfig, TlsConfig


class TlsError(Exception):
    """A certificate or key that cannot be used; the message names the file."""


def client_context(config: TlsConfig, what: str = "TLS to the LIS") -> ssl.SSLContext:
    """Checks the server's certificate and name; shows ours when configured. ``what``
    names the link in errors."""
    context = _with_authorities(ssl.Purpose.SERVER_AUTH, config, what)
    if config.cert_file is not None and config.key_file is not None:
        _load_ours(context, config.cert_file, config.key_file, what)
    return context


def server_context(config: TlsConfig, what: str = "TLS on the orders port") -> ssl.SSLContext:
    """Shows our certificate; checks the client's when it is required. ``what`` names the
    link in errors."""
    if config.cert_file is None or config.key_file is None:
        raise TlsError(f"{what} needs cert_file and key_file")
    context = _with_authorities(ssl.Purpose.CLIENT_AUTH, config, what)
    _load_ours(context, config.cert_file, config.key_file, what)
    if config.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _readable(path: Path, what: str) -> None:
    # ssl's own errors name no file, and OpenSSL's say only "PEM lib".
    try:
        path.open("rb").close()
    except OSError as exc:
        raise TlsError(f"{what}: {path}: {exc.strerror or exc}") from None


def _with_authorities(purpose: ssl.Purpose, config: TlsConfig, what: str) -> ssl.SSLContext:
    """A context checking the peer against ``ca_file``, or the system's authorities."""
    if config.ca_file is None:
        return ssl.create_default_context(purpose)
    _readable(config.ca_file, what)
    try:
        return ssl.create_default_context(purpose, cafile=str(config.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{what}: {config.ca_file}: {exc}") from None


def _load_ours(context: ssl.SSLContext, cert_file: Path, key_file: Path, what: str) -> None:
    _readable(cert_file, what)
    _readable(key_file, what)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{what}: {cert_file} with {key_file}: {exc}") from None


def instrument_context(config: InstrumentConfig) -> ssl.SSLContext | None:
    """The TLS an instrument's link is configured with: ours to show on a tcp-server, the
    analyser's to check on a tcp-client; None for plain TCP."""
    if config.tls is None:
        return None
    what = f"TLS on instrument {config.name}"
    if config.transport == "tcp-server":
        return server_context(config.tls, what)
    return client_context(config.tls, what)


def server_name(config: InstrumentConfig) -> str | None:
    """The name a tcp-client checks the analyser's certificate for."""
    if config.tls is None:
        return None
    return config.tls.server_name or config.host


def peer_allowed(writer: asyncio.StreamWriter, networks: Sequence[str]) -> bool:
    """Whether the peer of a connection is in one of ``networks`` (any when empty)."""
    peer = writer.get_extra_info("peername")
    return allowed(str(peer[0]) if isinstance(peer, tuple) else "", networks)


def allowed(address: str, networks: Sequence[str]) -> bool:
    """Whether a peer's address is in one of ``networks`` (any address when empty)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
