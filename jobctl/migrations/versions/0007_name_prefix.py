"""`list --name` on PostgreSQL, for patterns that start with a literal (`backup*`): an index of the
lowercased names with their ids, holding the names too, so a deep page of a common prefix is found
from the index alone (no table row read) and sorted by id.

The trigram index (0005) finds names by any piece, but every match it yields is a table row read to
sort by id; a prefix matched by many rows then costs more than reading the table newest first.
PostgreSQL only; SQLite searches names through its own index (0006).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEX = "ix_job_name_prefix"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # `name` is included: PostgreSQL scans an index on lower(name) alone only if it holds `name`.
        op.execute(
            sa.text(
                f"CREATE INDEX IF NOT EXISTS {INDEX} ON job (lower(name) text_pattern_ops, id) INCLUDE (name)"
            )
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"DROP INDEX IF EXISTS {INDEX}"))
