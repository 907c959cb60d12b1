"""Data for shell completion: job ids with their status, task names, queue names.

It runs on every <Tab>, so it stays light: the database driver itself (sqlite3 or psycopg2) rather than
SQLAlchemy, read-only, short timeouts, and nothing is ever created (no database file, no embedded Redis).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MAX_ID = 2**63 - 1
MAX_ID_DIGITS = 19


@contextlib.contextmanager
def _connect() -> Iterator[tuple[Any, str] | None]:
    """A read-only DB-API connection to the configured database and its placeholder, or None."""
    from .config import get_settings

    url = get_settings().resolved_database_url()
    scheme = url.split(":", 1)[0]
    if scheme.startswith("sqlite"):
        path = unquote(urlsplit(url).path)
        path = path[1:] if path.startswith("//") else path  # sqlite:////abs/path keeps one slash
        if not path or not os.path.exists(path):
            yield None
            return
        conn: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        placeholder = "?"
    elif scheme.startswith("postgres"):
        import psycopg2

        parts = urlsplit(url)
        conn = psycopg2.connect(urlunsplit(parts._replace(scheme="postgresql")), connect_timeout=2)
        placeholder = "%s"
    else:
        yield None
        return
    try:
        yield conn, placeholder
    finally:
        conn.close()


def _prefix_ranges(prefix: str, ph: str) -> tuple[str, list[Any]]:
    """Ids starting with the digits `prefix` as index range scans: `12`, `120..129`, `1200..1299`..."""
    base = int(prefix)
    clauses, params = [f"id = {ph}"], [base]
    for extra in range(1, MAX_ID_DIGITS - len(prefix) + 1):
        low = base * 10**extra
        if base == 0 or low > MAX_ID:
            break
        clauses.append(f"id BETWEEN {ph} AND {ph}")
        params += [low, min(low + 10**extra - 1, MAX_ID)]
    return "(" + " OR ".join(clauses) + ")", params


def job_ids(prefix: str, statuses: Sequence[str] = (), limit: int = 50) -> list[tuple[int, str]]:
    """Ids starting with `prefix` (newest first), each with `status  name`."""
    if prefix and (not prefix.isdigit() or len(prefix) > MAX_ID_DIGITS):
        return []
    with _connect() as found:
        if found is None:
            return []
        conn, ph = found
        params: list[Any]
        where, params = _prefix_ranges(prefix, ph) if prefix else ("1 = 1", [])
        if statuses:
            where += f" AND status IN ({', '.join(ph for _ in statuses)})"
            params += list(statuses)
        cur = conn.cursor()
        cur.execute(
            f"SELECT id, status, name FROM job WHERE {where} ORDER BY id DESC LIMIT {int(limit)}", params
        )
        rows = cur.fetchall()
    return [(int(i), f"{status}  {_short(name)}") for i, status, name in rows]


def _short(text: str, width: int = 40) -> str:
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def task_names(prefix: str) -> list[tuple[str, str]]:
    """Registered tasks starting with `prefix`, with their summaries."""
    from .config import get_settings
    from .tasks import all_tasks, load_task_modules

    load_task_modules(get_settings().task_modules)
    return [(name, spec.summary) for name, spec in all_tasks().items() if name.startswith(prefix)]


def queue_names(prefix: str, limit: int = 50) -> list[str]:
    """Queues jobs were submitted to, and the default queue, starting with `prefix`."""
    from .config import get_settings

    names = {get_settings().default_queue}
    with _connect() as found:
        if found is not None:
            cur = found[0].cursor()
            cur.execute(f"SELECT DISTINCT queue FROM job LIMIT {int(limit)}")
            names.update(row[0] for row in cur.fetchall())
    return sorted(n for n in names if n.startswith(prefix))
