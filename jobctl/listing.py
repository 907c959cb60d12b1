"""The `list` query: filtered, sorted pages of jobs that stay fast at any depth and table size."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import Job
from .store import JOB, get_engine, guarded, row_to_job


@guarded
def list_jobs(
    *,
    statuses: Sequence[str] = (),
    task: str | None = None,
    queue: str | None = None,
    limit: int = 100,
    offset: int = 0,
    since: datetime | None = None,
    name_like: str | None = None,
    order: Sequence[tuple[str, bool]] = (),
    before: int | None = None,
) -> list[Job]:
    """Rows matching the filters (and with an id below `before`), newest first unless `order` names
    (SORT_KEYS key, descending) pairs.

    The page is found by id first, then only its rows are read whole: skipping `offset` rows walks
    index entries (an index-only scan where the filters allow), not table rows.
    """
    engine = get_engine()
    wanted = list(dict.fromkeys(statuses))
    where = []
    if task:
        where.append(JOB.c.task == task)
    if queue:
        where.append(JOB.c.queue == queue)
    if name_like is not None:
        where.append(_name_matches(name_like, engine.dialect.name))
    if before is not None:
        where.append(JOB.c.id < before)  # a keyset: as cheap as the first page, however deep
    sort = [_sort_order(key, descending, engine.dialect.name) for key, descending in order]
    sort.append(JOB.c.id.desc())
    with engine.connect() as conn:
        lowest = None
        if since is not None:
            where.append(JOB.c.created_at >= since)
            if engine.dialect.name == "sqlite":
                found, lowest = _since_bound(conn, since)
                if not found:
                    return []
                if lowest is not None:
                    where.append(JOB.c.id >= lowest)
        phrases = None
        if name_like is not None and engine.dialect.name == "sqlite":
            phrases = _sqlite_name_phrases(conn, name_like)
        page: Any
        if len(wanted) > 1 and not order and phrases is None:
            # One newest-first index range per status, merged: neither database merges the ranges of
            # `status IN (...)` by id itself, so it would sort every matching row to find one page.
            branches = [sa.select(JOB.c.id).where(JOB.c.status == s, *where) for s in wanted]
            if engine.dialect.name != "sqlite":  # PostgreSQL merges only ranges it is told are sorted
                branches = [b.order_by(JOB.c.id.desc()) for b in branches]
            ids = sa.union_all(*branches)
            page = ids.order_by(ids.selected_columns.id.desc()).limit(limit).offset(offset).subquery()
        else:
            if wanted:
                where.append(JOB.c.status.in_(wanted))
            page_ids = sa.select(JOB.c.id).where(*where).order_by(*sort)
            if phrases is not None:
                # Walked through the trigram index newest first (it keeps ids in order), reading only
                # the rows it names: a page is found without visiting rows whose names cannot match.
                bounds: list[sa.ColumnElement[bool]] = [NAME_SEARCH.c.name.op("MATCH")(phrases)]
                bounds += [NAME_SEARCH.c.rowid >= lowest] if lowest is not None else []
                bounds += [NAME_SEARCH.c.rowid < before] if before is not None else []
                indexed = page_ids.join_from(NAME_SEARCH, JOB, JOB.c.id == NAME_SEARCH.c.rowid)
                page_ids = indexed.where(*bounds)
                if not order:
                    page_ids = page_ids.order_by(None).order_by(NAME_SEARCH.c.rowid.desc())
            page = page_ids.limit(limit).offset(offset).subquery()
        query = sa.select(JOB).join(page, JOB.c.id == page.c.id).order_by(*sort)
        return [row_to_job(r) for r in conn.execute(query)]


def _name_matches(name_like: str, dialect: str) -> sa.ColumnElement[bool]:
    """`name ILIKE name_like`. On PostgreSQL, a pattern that starts with a literal is written as
    what ILIKE does there (lowercase both sides, then LIKE), which its name prefix index (migration
    0007) answers; other patterns are left to the trigram index (0005)."""
    if dialect == "postgresql" and name_like[:1] not in ("%", "_", ""):
        return sa.func.lower(JOB.c.name).like(sa.func.lower(name_like), escape="\\")
    return JOB.c.name.ilike(name_like, escape="\\")


NAME_SEARCH = sa.table("job_name_search", sa.column("rowid"), sa.column("name"))  # migration 0006


def _sqlite_name_phrases(conn: Connection, name_like: str) -> str | None:
    """On SQLite, the query of the trigram index (FTS5 syntax) that finds a superset of the rows whose
    names match `name_like`: those holding each literal piece of the pattern three letters or longer
    (it folds case more widely than LIKE, and ignores wildcards and shorter pieces; the `ilike`
    condition decides). None when the pattern cannot use the index (escaped wildcards, no three
    letters in a row) or this SQLite could not create it (see migration 0006).
    """
    pieces = [piece for piece in re.split("[%_]", name_like) if len(piece) >= 3]
    if "\\" in name_like or not pieces:
        return None
    indexed = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_name_search'")
    if conn.execute(indexed).first() is None:
        return None
    return " AND ".join('"' + piece.replace('"', '""') + '"' for piece in pieces)


SINCE_WINDOW = 100_000


def _since_bound(conn: Connection, since: datetime) -> tuple[bool, int | None]:
    """Whether any row was created since `since`, and the lowest id among those rows when they are
    few (at most SINCE_WINDOW), else None.

    A newest-first walk filtered on `created_at` stops once it has its page, unless the matching rows
    run out: then it reads every older row too. SQLite keeps no statistics that would tell it to read
    a short window through its index instead; the lowest id bounds the walk. A long window needs no
    bound (its page is among the newest rows), and is told apart by two index lookups.
    """
    first = sa.select(JOB.c.id).where(JOB.c.created_at >= since).order_by(JOB.c.created_at).limit(1)
    newest = sa.select(sa.func.max(JOB.c.id))
    first_id, newest_id = conn.execute(sa.select(first.scalar_subquery(), newest.scalar_subquery())).one()
    if first_id is None:
        return False, None
    if newest_id - first_id > SINCE_WINDOW:
        return True, None
    window = sa.select(JOB.c.id).where(JOB.c.created_at >= since).limit(SINCE_WINDOW + 1).subquery()
    count, lowest = conn.execute(sa.select(sa.func.count(), sa.func.min(window.c.id))).one()
    return True, (int(lowest) if count <= SINCE_WINDOW else None)


SORT_KEYS = (
    "id",
    "name",
    "task",
    "status",
    "queue",
    "attempts",
    "created",
    "started",
    "completed",
    "updated",
    "duration",
)


def _sort_column(key: str, dialect: str) -> Any:
    if key == "duration":
        return seconds_between(JOB.c.started_at, JOB.c.completed_at, dialect)
    return JOB.c[f"{key}_at" if key in ("created", "started", "completed", "updated") else key]


def _sort_order(key: str, descending: bool, dialect: str) -> Any:
    column = _sort_column(key, dialect)
    ordered = column.desc() if descending else column.asc()
    # NULLS LAST only where there can be NULLs: on a NOT NULL column it would keep PostgreSQL from
    # reading an index backwards for a descending sort.
    if key == "duration" or column.nullable:
        ordered = ordered.nulls_last()
    return ordered


def seconds_between(start: Any, end: Any, dialect: str) -> Any:
    """A SQL expression for the seconds from `start` to `end` (NULL when either is NULL)."""
    if dialect == "sqlite":
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86_400.0
    return sa.extract("epoch", end - start)
