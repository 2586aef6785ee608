"""The few statements every message runs, on the database driver's own cursor.

For the small INSERTs and lookups of each message, SQLAlchemy's work around an execution
(its execution context, events, parameter and result objects) cost several times the
database's own. A :class:`Direct` statement is compiled by SQLAlchemy once per database
and set of parameter names, with SQLAlchemy's own conversion of each value (SQLite's
text dates, booleans as integers), then run straight on the driver's cursor of the same
connection, inside the same transaction. What is stored is what SQLAlchemy would have
stored. A driver's error comes out as SQLAlchemy's (``sqlalchemy.exc.DBAPIError``), and a
connection the error shows lost is invalidated, as SQLAlchemy does with its own.

Rows come back as the driver gives them: plain tuples, times on SQLite as text. Use it
for statements whose rows are numbers and text, or that return nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

#: Compiled forms kept per statement (one per database, set of parameter names and
#: padded length of each list): a bound, whatever comes.
_KEPT_FORMS = 64


@dataclass(frozen=True, slots=True)
class _Form:
    """A statement compiled for one database and one set of parameter names."""

    text: str
    positional: bool
    names: tuple[str, ...]
    """The driver's parameters, in the order of a positional statement's placeholders."""
    sources: tuple[tuple[str | None, Any], ...]
    """Where each driver parameter's value comes from: a given parameter and, when it is
    one of a list's items, its index; or (None, value) for a value fixed in the
    statement, or a column's own default, which an INSERT not given the column takes."""
    convert: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, given: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = []
        for (name, item), convert in zip(self.sources, self.convert, strict=True):
            if name is None:  # fixed when compiled (and converted then)
                values.append(item)
                continue
            if item is None:
                value = given[name]
            else:
                items = given[name]
                # Lists are padded with their last item: the same IN, fewer forms.
                value = items[item] if item < len(items) else items[-1]
            values.append(value if convert is None else convert(value))
        if self.positional:
            return values
        return dict(zip(self.names, values, strict=True))


class Direct:
    """One statement (a SQLAlchemy Core construct), run on the driver's cursor.

    Parameters named as ``bindparam(..., expanding=True)`` take lists (for IN): the
    statement is compiled once per power of two the length of each list reaches. A
    statement written differently in each database (an upsert) is given as a function of
    the database's name. Any thread may run it.
    """

    def __init__(self, statement: ClauseElement | Callable[[str], ClauseElement]) -> None:
        self.statement = statement
        self._forms: OrderedDict[tuple[object, ...], _Form] = OrderedDict()
        self._compiling = threading.Lock()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run once; returns the driver's cursor, to fetch from."""
        form = self._form(conn.dialect, params)
        with _driver_errors(conn, form.text) as raw:
            return raw.execute(form.text, form.parameters(params))

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (rows with the same names; lists of the same lengths)."""
        if not rows:
            return
        form = self._form(conn.dialect, rows[0])
        with _driver_errors(conn, form.text) as raw:
            cursor = raw.cursor()
            try:
                cursor.executemany(form.text, [form.parameters(row) for row in rows])
            finally:
                cursor.close()

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the only row (an error when there is none)."""
        row = self.execute(conn, params).fetchone()
        if row is None:
            raise exc.NoResultFound("the statement returned no row")
        return row[0]

    def _form(self, dialect: Dialect, params: Mapping[str, Any]) -> _Form:
        key = (
            dialect.name,
            *(
                (name, _padded(len(value))) if isinstance(value, list | tuple) else name
                for name, value in params.items()
            ),
        )
        form = self._forms.get(key)
        if form is None:
            form = self._compile(dialect, params)
            with self._compiling:
                self._forms[key] = form
                if len(self._forms) > _KEPT_FORMS:
                    self._forms.popitem(last=False)
        return form

    def _compile(self, dialect: Dialect, params: Mapping[str, Any]) -> _Form:
        lists = {k: _padded(len(v)) for k, v in params.items() if isinstance(v, list | tuple)}
        statement = self.statement
        if not isinstance(statement, ClauseElement):
            statement = statement(dialect.name)
        compiled = statement.compile(dialect=dialect, column_keys=list(params))
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {statement!r}")
        if compiled.escaped_bind_names:
            raise ValueError("parameter names that need escaping are not supported")
        defaults: dict[str, Any] = {}
        for column in getattr(compiled, "insert_prefetch", ()):
            if column.default is None or not column.default.is_scalar:
                raise ValueError(f"column {column.key} needs a value computed at insert")
            defaults[column.key] = column.default.arg
        # Each list's items become parameters of their own: name_1, name_2, ...
        expanded = compiled.construct_expanded_state(
            {name: [None] * lists[name] if name in lists else None for name in params}
        )
        names = (
            tuple(expanded.positiontup or ()) if compiled.positional else tuple(expanded.parameters)
        )
        sources = []
        convert = []
        for name in names:
            key, item = _source(name, lists, defaults)
            # An expanded list's items share the list's parameter and its type.
            bind = compiled.binds[name if key is None or item is None else key]
            if key is not None and key not in params:
                # A value written into the statement (LIMIT 1) is a parameter too.
                key, item = None, bind.effective_value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if key is None and processor is not None:
                item, processor = processor(item), None
            sources.append((key, item))
            convert.append(processor)
        return _Form(expanded.statement, compiled.positional, names, tuple(sources), tuple(convert))


def _padded(length: int) -> int:
    return 1 << (length - 1).bit_length() if length else 0


def run_text(conn: Connection, text: str, params: Mapping[str, Any]) -> Any:
    """Run SQL written for the driver (its own placeholders) on its cursor; returns the
    cursor."""
    with _driver_errors(conn, text) as raw:
        return raw.execute(text, params)


def _source(
    name: str, lists: Mapping[str, int], defaults: Mapping[str, Any]
) -> tuple[str | None, Any]:
    if name in defaults:
        return None, defaults[name]
    key, _, number = name.rpartition("_")
    if key in lists and number.isdigit():
        # An expanded list's parameters are named after it: key_1 is its first item.
        return key, int(number) - 1
    return name, None


@contextmanager
def _driver_errors(conn: Connection, text: str) -> Iterator[Any]:
    raw = conn.connection.driver_connection
    try:
        yield raw
    except conn.dialect.loaded_dbapi.Error as error:
        lost = conn.dialect.is_disconnect(error, raw, None)
        if lost:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            text,
            None,
            error,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=conn.dialect,
        ) from error
