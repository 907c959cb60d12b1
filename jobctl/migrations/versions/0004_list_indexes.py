"""Indexes for `list` at scale: filter indexes that cover each other's columns, and creation time.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (name, columns) now, and the index each one replaces
LIST_INDEXES = (
    ("ix_job_status_list", ["status", "id", "task", "queue"], "ix_job_status_id"),
    ("ix_job_task_list", ["task", "id", "status", "queue"], "ix_job_task_id_order"),
    ("ix_job_queue_list", ["queue", "id", "status", "task"], "ix_job_queue_id"),
)


def upgrade() -> None:
    for name, columns, replaced in LIST_INDEXES:
        op.create_index(name, "job", columns)
        op.drop_index(replaced, table_name="job")
    op.create_index("ix_job_created_at_id", "job", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_created_at_id", table_name="job")
    for name, columns, replaced in LIST_INDEXES:
        op.create_index(replaced, "job", columns[:2])
        op.drop_index(name, table_name="job")
