"""YAML files people edit: errors that name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class FileError(Exception):
    """A file that cannot be used; each line of the message is ``file:line: field: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the value at ``loc`` in a composed YAML document."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == key), None)
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


def read_mapping(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The file's top-level mapping and its node tree (for line numbers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise FileError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    try:
        root = yaml.compose(text)
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FileError([f"{path}{where}: not valid YAML: {problem}"]) from None
    if loaded is None:
        return {}, root
    if not isinstance(loaded, dict):
        raise FileError([f"{path}:1: the file must be a mapping of sections"])
    return loaded, root


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
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = line_of(root, loc) if root is not None else None
        where = f"{path}:{line}" if path and line else (str(path) if path else "environment")
        lines.append(f"{where}: {field}: {problem['msg']}")
    return lines
