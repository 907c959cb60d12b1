"""Statements run on the database driver's own cursor: the few a worker runs for every job.

Each statement is still written with SQLAlchemy and compiled by it, once per dialect, into the SQL and
the parameter and column conversions SQLAlchemy would apply; only the execution skips its
per-statement machinery (execution contexts, result objects, events). In a forking worker that
machinery was most of a job's claim: after every fork, the memory it touches is copied again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect

from .store import get_engine

Converter = Callable[[Any], Any]


class Prepared:
    """One statement compiled for one dialect: its SQL, how its parameters are bound, and how the
    columns it returns are read."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self._compiled = compiled
        positional = compiled.positional  # SQLite's `?` marks, or PostgreSQL's `%(name)s`
        self._order: tuple[str, ...] | None = tuple(compiled.positiontup or ()) if positional else None
        self._binds: dict[str, Converter] = {}
        for bind, name in compiled.bind_names.items():
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if convert is not None:
                self._binds[name] = convert
        # What it returns: a SELECT's columns, an UPDATE's RETURNING columns (none without one).
        self._columns = [(c.key, c.type.dialect_impl(dialect)) for c in statement.exported_columns]
        self._dialect = dialect
        self._readers: list[tuple[str, Converter | None]] | None = None

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for `values` (by bind name), converted as SQLAlchemy would."""
        params = self._compiled.construct_params(dict(values))
        for name, convert in self._binds.items():
            params[name] = convert(params[name])
        return [params[name] for name in self._order] if self._order is not None else params

    def rows(self, cursor: Any) -> list[dict[str, Any]]:
        """The rows `cursor` returns for this statement, each as {column: value}."""
        fetched = cursor.fetchall()
        if self._readers is None:
            described = cursor.description or ()
            self._readers = [
                (name, type_.result_processor(self._dialect, found[1]))
                for (name, type_), found in zip(self._columns, described, strict=True)
            ]
        readers = self._readers
        return [
            {name: v if read is None else read(v) for (name, read), v in zip(readers, row, strict=True)}
            for row in fetched
        ]


_prepared: dict[tuple[Dialect, Any], Prepared] = {}


def prepared(statement: Any, dialect: Dialect) -> Prepared:
    """`statement` compiled for `dialect`, once (statements are built once, see lifecycle.py)."""
    key = (dialect, statement)
    found = _prepared.get(key)
    if found is None:
        found = _prepared[key] = Prepared(statement, dialect)
    return found


class Transaction:
    """Statements run in one transaction on a pooled connection's driver cursor."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cursor, self.dialect = cursor, dialect

    def execute(self, statement: Any, values: Mapping[str, Any]) -> int:
        """Run `statement` with `values`; the number of rows it matched."""
        found = prepared(statement, self.dialect)
        self.cursor.execute(found.sql, found.parameters(values))
        return int(self.cursor.rowcount)

    def rows(self, statement: Any, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run `statement` with `values`; the rows it returns."""
        found = prepared(statement, self.dialect)
        self.cursor.execute(found.sql, found.parameters(values))
        return found.rows(self.cursor)


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """A transaction on a connection from this process's pool, committed on success. SQLite's takes
    the write lock at once, as `store.begin` does. Driver errors are raised as SQLAlchemy raises them
    (so `store.guarded` reports an unreachable database), and a connection found broken is dropped."""
    engine = get_engine()
    dialect = engine.dialect
    raw = engine.raw_connection()
    cursor = None
    try:
        cursor = raw.cursor()
        if dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        yield Transaction(cursor, dialect)
        raw.commit()
    except dialect.loaded_dbapi.Error as exc:
        with contextlib.suppress(Exception):
            raw.rollback()
        broken = dialect.is_disconnect(exc, raw.driver_connection, cursor)
        if broken:
            raw.invalidate(exc)
        raise sa_exc.DBAPIError.instance(
            None, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=broken, dialect=dialect
        ) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            raw.rollback()
        raise
    finally:
        if cursor is not None:
            with contextlib.suppress(Exception):
                cursor.close()
        raw.close()
