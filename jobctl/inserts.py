"""Inserting new job rows, one or thousands: ids taken first, then one bulk write.

Taking the ids before the insert lets every row carry its RQ job id (`task_id`) in that same
insert, with no UPDATE afterwards. PostgreSQL loads the rows with COPY (several times faster than
multi-row INSERTs); SQLite gets one executemany inside the write lock.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from .models import Job, JobStatus, utcnow

JOB = Job.__table__  # type: ignore[attr-defined]


def insert_values(
    conn: Connection, rows: Sequence[dict[str, Any]], queue_id: Callable[[int], str]
) -> list[dict[str, Any]]:
    """Insert pending rows in the caller's transaction; returns each row's stored values, with its
    `id` and `task_id` (`queue_id(id)`), in the order given."""
    if not rows:
        return []
    now = utcnow()
    ids = _new_ids(conn, len(rows))
    pending = JobStatus.PENDING.value
    values = [
        {
            **row,
            "id": job_id,
            "task_id": queue_id(job_id),
            "status": pending,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for row, job_id in zip(rows, ids, strict=True)
    ]
    _write(conn, values)
    return values


def _new_ids(conn: Connection, count: int) -> list[int]:
    """`count` ids for new rows, ascending."""
    if conn.dialect.name == "postgresql":
        query = sa.text("SELECT nextval(pg_get_serial_sequence('job', 'id')) FROM generate_series(1, :n)")
        return sorted(conn.execute(query, {"n": count}).scalars())
    # SQLite: the write lock is held from BEGIN IMMEDIATE (store.begin), so nobody else inserts
    # before this transaction ends; max + 1 is the id SQLite itself would give.
    last = conn.execute(sa.select(sa.func.max(JOB.c.id))).scalar() or 0
    return list(range(last + 1, last + 1 + count))


def _write(conn: Connection, values: Sequence[dict[str, Any]]) -> None:
    """One bulk write of rows that all have the same keys: PostgreSQL's COPY, else executemany."""
    dialect = conn.dialect
    if dialect.name == "postgresql":
        columns = list(values[0])
        text = "".join("\t".join(row) + "\n" for row in _bound_rows(dialect, columns, values, _copy_text))
        _copy(conn, columns, text)
        return
    insert = sa.insert(JOB).compile(dialect=dialect, column_keys=list(values[0]))
    columns = list(insert.positiontup or [])
    conn.exec_driver_sql(str(insert), [tuple(row) for row in _bound_rows(dialect, columns, values)])


_SCALARS = (str, int, bool, float, datetime, type(None))


def _bound_rows(
    dialect: sa.Dialect,
    columns: Sequence[str],
    values: Sequence[dict[str, Any]],
    finish: Callable[[Any], Any] | None = None,
) -> list[list[Any]]:
    """Each row's values for `columns` as the driver gets them: converted by the columns' own
    SQLAlchemy types (what `conn.execute(insert, values)` does), then by `finish`. A column holding
    the same value in every row is converted once: in a bulk submission most of them do, and the
    per-value conversions are most of what SQLAlchemy's executemany costs."""
    template: list[Any] = []
    varying: list[tuple[int, str, Callable[[Any], Any] | None]] = []
    for index, name in enumerate(columns):
        process = JOB.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        first = values[0][name]
        same = type(first) in _SCALARS and all(
            row[name] is first or (type(row[name]) is type(first) and row[name] == first) for row in values
        )
        if same:
            value = process(first) if process else first
            template.append(finish(value) if finish else value)
        else:
            template.append(None)
            varying.append((index, name, process))
    rows = []
    for row in values:
        bound = template.copy()
        for index, name, process in varying:
            value = row[name]
            if process is not None:
                value = process(value)
            bound[index] = finish(value) if finish else value
        rows.append(bound)
    return rows


# COPY's text format: backslash escapes for these, \N for NULL.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """A value bound for psycopg2 (JSON already serialized) in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value).translate(_ESCAPES)


def _copy(conn: Connection, columns: Sequence[str], text: str) -> None:
    """Load rows in COPY's text format, in the connection's transaction."""
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY job ({', '.join(quote(name) for name in columns)}) FROM STDIN"
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    try:
        with contextlib.closing(dbapi.cursor()) as cursor:
            cursor.copy_expert(statement, io.StringIO(text))
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy raises for its own statements: IntegrityError, OperationalError, ...
        raise sa_exc.DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from exc
