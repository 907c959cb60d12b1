"""`list --name` on SQLite: a trigram full-text index of job names (FTS5). `list` walks it newest
first (it keeps ids in order) and reads only the rows whose names hold the pattern's pieces.

SQLite only, where the library was built with FTS5 (Python's usually is) and is 3.34 or newer (the
trigram tokenizer). Triggers keep the index in step with the `job` table. Without it, `--name` keeps
working, by reading rows newest first until a page is full. PostgreSQL has its own (0005).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "job_name_search"
log = logging.getLogger("jobctl.migrations")  # printed by `jobctl db upgrade`

TRIGGERS = {
    f"{TABLE}_insert": f"AFTER INSERT ON job BEGIN "
    f"INSERT INTO {TABLE}(rowid, name) VALUES (new.id, new.name); END",
    f"{TABLE}_delete": f"AFTER DELETE ON job BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, name) VALUES ('delete', old.id, old.name); END",
    f"{TABLE}_update": f"AFTER UPDATE OF name ON job BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, name) VALUES ('delete', old.id, old.name); "
    f"INSERT INTO {TABLE}(rowid, name) VALUES (new.id, new.name); END",
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    create = (
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} "
        "USING fts5(name, content='job', content_rowid='id', tokenize='trigram')"
    )
    try:
        with bind.begin_nested():  # a SQLite without FTS5 or trigrams must not abort the upgrade
            bind.execute(sa.text(create))
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        log.warning("no name index for `list --name`: this SQLite cannot create it (%s)", reason)
        return
    for name, body in TRIGGERS.items():
        bind.execute(sa.text(f"CREATE TRIGGER IF NOT EXISTS {name} {body}"))
    bind.execute(sa.text(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')"))  # the rows stored so far


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in TRIGGERS:
        op.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
    op.execute(sa.text(f"DROP TABLE IF EXISTS {TABLE}"))
