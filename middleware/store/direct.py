"""The few statements every message runs, on the database driver's own cursor.

For the small INSERTs and lookups of each message, SQLAlchemy's work around an execution
(its execution context, events, parameter and result objects) cost several times the
database's own. A :class:`Direct` statement is compiled by SQLAlchemy once per database
and set of parameter names, with SQLAlchemy's own conversion of each value (SQLite's
text dates, booleans as integers), then run straight on the driver's cursor of the same
connection, inside the same transaction. What is stored is what SQLAlchemy would have
stored. A driver's error comes out as SQLAlchemy's (``sqlalchemy.exc.DBAPIError``), and a
connection the error shows lost is invalidated, as SQLAlchemy does with its own.

:meth:`Direct.execute` gives the driver's cursor, its rows as the driver gives them
(times on SQLite as text); :meth:`Direct.rows` gives them as SQLAlchemy reads them. Run
them in a transaction the caller began (the store writer's): outside one, SQLite runs
each statement in a snapshot of its own.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, TextualSelect, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter

from middleware.store.sql import padded

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
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    """Each driver parameter's given value (for a list's item, the list)."""
    fixed: Mapping[str, Any]
    """Values set when compiled, already converted: written into the statement (LIMIT
    1), or a column's own default, which an INSERT not given the column takes."""
    items: tuple[tuple[int, int], ...]
    """(position, index) of each list item: lists are padded with their last item, the
    same IN with fewer forms."""
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]

    def parameters(self, given: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        found = self.values({**self.fixed, **given} if self.fixed else given)
        if self.items or self.conversions:
            values = list(found)
            for position, index in self.items:
                items = values[position]
                values[position] = items[index] if index < len(items) else items[-1]
            for position, convert in self.conversions:
                values[position] = convert(values[position])
            found = tuple(values)
        if self.positional:
            return found
        return dict(zip(self.names, found, strict=True))


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
        self._lists: dict[str, tuple[str, ...]] = {}
        self._shapes: dict[str, _Shape] = {}
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

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """A SELECT's rows, each value as SQLAlchemy reads it (SQLite's text times as
        datetimes, its integers as booleans), by column name as SQLAlchemy's rows are."""
        cursor = self.execute(conn, params)
        fetched = cursor.fetchall()
        shape = self._shapes.get(conn.dialect.name)
        if shape is None:
            # The driver's type of each column picks the conversion (PostgreSQL numbers).
            kinds = [column[1] for column in cursor.description]
            shape = _shape(self._statement_for(conn.dialect), conn.dialect, kinds)
            self._shapes[conn.dialect.name] = shape
        make, conversions = shape
        if not conversions:
            return [make(row) for row in fetched]
        out = []
        for row in fetched:
            values = list(row)
            for position, convert in conversions:
                values[position] = convert(values[position])
            out.append(make(values))
        return out

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the only row (an error when there is none)."""
        row = self.execute(conn, params).fetchone()
        if row is None:
            raise exc.NoResultFound("the statement returned no row")
        return row[0]

    def _form(self, dialect: Dialect, params: Mapping[str, Any]) -> _Form:
        lists = self._lists.get(dialect.name)
        if lists is None:
            lists = self._lists[dialect.name] = _expanding(self._statement_for(dialect))
        key: tuple[object, ...] = (dialect.name, tuple(params))
        if lists:
            key += tuple(padded(len(params[name])) for name in lists if name in params)
        form = self._forms.get(key)
        if form is None:
            form = self._compile(dialect, params, lists)
            with self._compiling:
                self._forms[key] = form
                if len(self._forms) > _KEPT_FORMS:
                    self._forms.popitem(last=False)
        return form

    def _statement_for(self, dialect: Dialect) -> ClauseElement:
        statement = self.statement
        return statement if isinstance(statement, ClauseElement) else statement(dialect.name)

    def _compile(
        self, dialect: Dialect, params: Mapping[str, Any], expanding: tuple[str, ...]
    ) -> _Form:
        lists = {name: padded(len(params[name])) for name in expanding if name in params}
        statement = self._statement_for(dialect)
        compiled = statement.compile(dialect=dialect, column_keys=list(params))
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {statement!r}")
        if compiled.escaped_bind_names:
            raise ValueError("parameter names that need escaping are not supported")
        fixed: dict[str, Any] = {}
        for column in getattr(compiled, "insert_prefetch", ()):
            if column.default is None or not column.default.is_scalar:
                raise ValueError(f"column {column.key} needs a value computed at insert")
            fixed[column.key] = column.default.arg
        # Each list's items become parameters of their own: name_1, name_2, ...
        expanded = compiled.construct_expanded_state(
            {name: [None] * lists[name] if name in lists else None for name in params}
        )
        names = (
            tuple(expanded.positiontup or ()) if compiled.positional else tuple(expanded.parameters)
        )
        sources: list[str] = []
        items: list[tuple[int, int]] = []
        conversions: list[tuple[int, Callable[[Any], Any]]] = []
        converted: set[str] = set()
        for position, name in enumerate(names):
            of_list, index = _list_item(name, lists)
            source = of_list or name
            bind = compiled.binds[source]
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            sources.append(source)
            if of_list:
                items.append((position, index))
            elif source not in params:
                if source not in fixed:
                    fixed[source] = bind.effective_value  # written into the statement: LIMIT 1
                if convert is not None and source not in converted:
                    fixed[source] = convert(fixed[source])
                    converted.add(source)
                continue
            if convert is not None:
                conversions.append((position, convert))
        return _Form(
            expanded.statement,
            compiled.positional,
            names,
            _getter(sources),
            fixed,
            tuple(items),
            tuple(conversions),
        )


_Shape = tuple[Callable[[Sequence[Any]], Any], tuple[tuple[int, Callable[[Any], Any]], ...]]


def _shape(statement: ClauseElement, dialect: Dialect, kinds: Sequence[Any]) -> _Shape:
    """How a SELECT's rows are made: a row type naming its columns, and the conversion of
    each column SQLAlchemy converts."""
    if not isinstance(statement, Select | TextualSelect):
        raise TypeError("rows() reads a SELECT")
    columns = list(statement.selected_columns)
    fields = tuple(str(column.key) for column in columns)
    named: Any = namedtuple("Row", fields)  # type: ignore[misc]

    class Row(named):
        """Read by name too, and as a mapping (SQLAlchemy's ``row._mapping``)."""

        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return self._asdict()

    conversions = []
    for position, (column, kind) in enumerate(zip(columns, kinds, strict=True)):
        convert = column.type.dialect_impl(dialect).result_processor(dialect, kind)
        if convert is not None:
            conversions.append((position, convert))
    return Row._make, tuple(conversions)


def _expanding(statement: ClauseElement) -> tuple[str, ...]:
    """The names of a statement's list parameters (for IN)."""
    return tuple(
        sorted(
            {
                element.key
                for element in visitors.iterate(statement)
                if isinstance(element, BindParameter) and element.expanding
            }
        )
    )


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:
        only = names[0]
        return lambda given: (given[only],)
    if not names:
        return lambda given: ()
    return operator.itemgetter(*names)


def _list_item(name: str, lists: Mapping[str, int]) -> tuple[str | None, int]:
    """The list a parameter is an item of (``ids_2`` is the second of ``ids``), and its
    index; (None, 0) for one that is not."""
    key, _, number = name.rpartition("_")
    if key in lists and number.isdigit():
        return key, int(number) - 1
    return None, 0


def run_text(conn: Connection, text: str, params: Mapping[str, Any]) -> Any:
    """Run SQL written for the driver (its own placeholders) on its cursor; returns the
    cursor."""
    with _driver_errors(conn, text) as raw:
        return raw.execute(text, params)


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
