"""`list --name` on PostgreSQL: a trigram index, so a pattern that matches few of many rows is found
without reading the whole table.

PostgreSQL only, and only where the pg_trgm extension can be created (it ships with PostgreSQL and is
trusted: the database's owner may create it). Without it, `--name` keeps working, by reading rows
newest first until a page is full. SQLite has no such index.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_job_name_trigram"
log = logging.getLogger("jobctl.migrations")  # printed by `jobctl db upgrade`


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a refusal must not abort the rest of the upgrade
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        log.warning("no trigram index for `list --name`: cannot create the pg_trgm extension (%s)", reason)
        return
    bind.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {INDEX} ON job USING gin (name gin_trgm_ops)"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"DROP INDEX IF EXISTS {INDEX}"))
