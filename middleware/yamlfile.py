"""YAML files people edit: errors that name the file, the line and the field.

Files are read by a stricter loader than ``yaml.safe_load``. What a hand-edited file never
needs, and what would break or stall the reading, is refused like any other mistake, with
its line: explicit tags, deep nesting, aliases that expand beyond reason, keys that are
not names or are given twice, dates that do not exist, numbers no setting could mean.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

#: Levels of nesting, aliases expanded: the files need fewer than ten, and reading them
#: must stay far below Python's recursion limit.
MAX_DEPTH = 50
#: Values a file may hold once its aliases are expanded: a few lines of aliases of
#: aliases can otherwise stand for billions.
MAX_VALUES = 100_000
#: Characters a file may have: PyYAML reads some 100 kB a second, so a larger file would
#: hold a reload for long; no file needs as many, and rules can be split into several.
MAX_CHARACTERS = 1_000_000
#: The largest integer (int64): no rule or setting means more.
MAX_INT = 2**63 - 1
#: Characters of a number as written; longer ones are refused before being read, since
#: reading some forms (60-based ``1:00:00...``) takes time that grows with their square.
_MAX_NUMBER_TEXT = 64

_MERGE = "tag:yaml.org,2002:merge"

Place = tuple[int | str, ...]


class FileError(Exception):
    """A file that cannot be used; each line of the message is ``file:line: field: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Stop(Exception):
    """Reading cannot go on; the loader's problems say why."""


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that records each node's place and every problem with its line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.problems: list[tuple[int, Place, str]] = []
        self.places: dict[yaml.Node, Place] = {}
        self._place: list[int | str] = []
        self._depth = 0
        self._failed: set[yaml.Node] = set()

    def note(self, mark: yaml.Mark, place: Place, problem: str) -> None:
        self.problems.append((mark.line + 1, place, problem))

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node: yaml.Node = super().compose_node(parent, index)
            return node
        # the composer passes a sequence item's index, a mapping value's key node, and
        # None for a mapping key or the document itself
        step: list[int | str] = []
        if isinstance(index, int):
            step = [index]
        elif isinstance(index, yaml.ScalarNode):
            step = [index.value]
        elif isinstance(index, yaml.Node):
            step = ["?"]
        self._place += step
        place = tuple(self._place)
        if event.tag is not None:
            shown = event.tag.replace("tag:yaml.org,2002:", "!!")
            self.note(event.start_mark, place, f"tag {shown} is not accepted: write plain values")
            raise _Stop
        if self._depth >= MAX_DEPTH:
            self.note(event.start_mark, place, f"nested more than {MAX_DEPTH} levels deep")
            raise _Stop
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        self.places[node] = place
        del self._place[len(self._place) - len(step) :]
        return node

    def check_size(self, root: yaml.Node) -> None:
        """Refuse aliases that make the document too large, too deep or contain itself."""
        sizes: dict[yaml.Node, tuple[int, int]] = {}  # node: (values, depth), expanded
        entered: set[yaml.Node] = set()
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            children = _children(node)
            if done:
                entered.discard(node)
                values = 1 + sum(sizes[child][0] for child in children)
                depth = 1 + max((sizes[child][1] for child in children), default=0)
                sizes[node] = (values, depth)
                if values > MAX_VALUES or depth > MAX_DEPTH:
                    problem = (
                        f"aliases make this more than {MAX_VALUES} values"
                        if values > MAX_VALUES
                        else f"aliases nest this more than {MAX_DEPTH} levels deep"
                    )
                    self.note(node.start_mark, self.places.get(node, ()), problem)
                    raise _Stop
            elif node in entered:
                self.note(
                    node.start_mark, self.places.get(node, ()), "an alias inside the value it names"
                )
                raise _Stop
            elif node not in sizes:
                entered.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in children)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # a scalar that matched a type's pattern but is no such value (2027-02-30)
            text = node.value if isinstance(node, yaml.ScalarNode) else ""
            shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}"
            self.note(node.start_mark, self.places.get(node, ()), f"cannot read {shown!r}: {exc}")
            self.recursive_objects.pop(node, None)
            self.constructed_objects[node] = None
            self._failed.add(node)
            return None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        place = self.places.get(node, ())
        first: dict[str, int] = {}
        usable = True
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # keys merged in may be overridden: that is what merging is for
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key_node in self._failed:
                usable = False
            elif not isinstance(key, str):
                usable = False
                if isinstance(key_node, yaml.ScalarNode):
                    written = key_node.value
                    problem = f"key {written!r} is not read as a name: write it in quotes"
                    self.note(key_node.start_mark, (*place, written), problem)
                else:
                    self.note(key_node.start_mark, place, "a key must be a name, not a collection")
            elif key in first:
                problem = f"given twice, at lines {first[key]} and {line}"
                self.note(key_node.start_mark, (*place, key), problem)
            else:
                first[key] = line
        if not usable:
            for _, value_node in node.value:
                self.construct_object(value_node)  # for the problems of its values
            return {}  # the file is refused; the mapping is never looked at
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping

    def construct_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > _MAX_NUMBER_TEXT:
            raise ValueError(f"a number of more than {_MAX_NUMBER_TEXT} characters")
        value: int = self.construct_yaml_int(node)
        if abs(value) > MAX_INT:
            raise ValueError(f"too large (at most {MAX_INT})")
        return value

    def construct_float(self, node: yaml.ScalarNode) -> float:
        if len(node.value) > _MAX_NUMBER_TEXT:
            raise ValueError(f"a number of more than {_MAX_NUMBER_TEXT} characters")
        value: float = self.construct_yaml_float(node)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_float)
# A lone "=" resolves to YAML 1.1's "value" type, which SafeLoader cannot build: it is text.
_Loader.add_constructor("tag:yaml.org,2002:value", _Loader.construct_yaml_str)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def field_name(place: Place) -> str:
    """``a.0.b``; a key with a line break or a tab in it is quoted, so that the name
    stays on its line."""
    parts = (p if isinstance(p, int) or p.isprintable() else repr(p) for p in place)
    return ".".join(str(p) for p in parts) or "(top level)"


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the value at ``loc`` in a composed YAML document."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            # the last one: a key written in the mapping overrides one merged in with <<
            match = next(
                (
                    v
                    for k, v in reversed(node.value)
                    if isinstance(k, yaml.ScalarNode) and k.value == key
                ),
                None,
            )
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    if line is None and node is not None:
        line = node.start_mark.line + 1
    return line


#: A file changed less than this long ago may still be being written (an editor or a tool
#: that writes in place rather than renaming a finished file over it): a daemon putting
#: files in force reads it once it has been left alone this long.
SETTLE_SECONDS = 0.5
#: The longest wait for that, for all the files of one reading; then they are read as
#: they are.
SETTLE_LIMIT = 5.0


def read_settled(
    path: Path, settle: float, deadline: float
) -> tuple[dict[str, Any], yaml.Node | None]:
    """:func:`read_mapping` of a file once it has not changed for ``settle`` seconds (or
    ``time.monotonic()`` has reached ``deadline``), refused if it changed while it was
    read: half a file is never taken for the whole. A file renamed over it meanwhile
    changes nothing: what was read is one whole file."""
    while True:
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            break  # reading it says why
        # A time ahead of the clock (copied with its times from a host ahead) says
        # nothing of when it was written: no wait for it.
        wait = min(settle - age, deadline - time.monotonic())
        if age < 0 or wait <= 0:
            break
        time.sleep(wait)
    return _parse(path, _read(path, check_unchanged=True))


def read_mapping(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The file's top-level mapping and its node tree (for line numbers)."""
    return _parse(path, _read(path))


def _read(path: Path, *, check_unchanged: bool = False) -> str:
    try:
        with path.open(encoding="utf-8") as stream:
            before = _written(stream.fileno())
            text = stream.read(MAX_CHARACTERS + 1)
            if check_unchanged and _written(stream.fileno()) != before:
                raise FileError(
                    [
                        f"{path}: changed while it was read: written in place by someone? "
                        "Reload once it is written (write a new file and rename it over "
                        "the old one)"
                    ]
                )
    except OSError as exc:
        raise FileError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise FileError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    if len(text) > MAX_CHARACTERS:
        raise FileError([f"{path}: longer than {MAX_CHARACTERS} characters: split it"])
    return text


def _written(descriptor: int) -> tuple[int, int, int]:
    """What changes when a file is written (not when it is read): size, modification and
    change times."""
    found = os.fstat(descriptor)
    return found.st_size, found.st_mtime_ns, found.st_ctime_ns


def _parse(path: Path, text: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise _not_yaml(path, text, exc) from None
    root: yaml.Node | None = None
    loaded: Any = None
    try:
        root = loader.get_single_node()
        if root is not None:
            loader.check_size(root)
            loaded = loader.construct_document(root)
    except _Stop:
        pass
    except yaml.YAMLError as exc:
        raise _not_yaml(path, text, exc) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's scanner reads an escape such as "\U99999999" without checking it
        line = loader.get_mark().line + 1
        raise FileError([f"{path}:{line}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    if loader.problems:
        raise FileError(
            [
                f"{path}:{line}: {field_name(place)}: {problem}"
                for line, place, problem in sorted(loader.problems, key=lambda p: p[0])
            ]
        )
    if loaded is None:
        return {}, root
    if not isinstance(loaded, dict):
        raise FileError([f"{path}:1: the file must be a mapping of sections"])
    return loaded, root


def _not_yaml(path: Path, text: str, error: yaml.YAMLError) -> FileError:
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        problem = f"character {chr(error.character)!r}: {error.reason}"
        return FileError([f"{path}:{line}: not valid YAML: {problem}"])
    mark = getattr(error, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    # one line per problem, whatever PyYAML's message
    return FileError([f"{path}{where}: not valid YAML: {' '.join(problem.split())}"])


def describe(
    error: ValidationError,
    path: Path | None,
    root: yaml.Node | None,
    prefix: tuple[int | str, ...] = (),
) -> list[str]:
    """One ``file:line: field: message`` line per problem pydantic found."""
    lines = []
    for problem in error.errors():
        loc = prefix + tuple(problem["loc"])
        field = field_name(loc)
        line = line_of(root, loc) if root is not None else None
        where = f"{path}:{line}" if path and line else (str(path) if path else "environment")
        lines.append(f"{where}: {field}: {problem['msg']}")
    return lines
