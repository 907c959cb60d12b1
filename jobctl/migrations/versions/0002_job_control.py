"""Job control: scheduling, dependencies, retry backoff, soft timeouts, priorities, unique keys, schedules.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobctl.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNIQUE_ACTIVE_WHERE = "unique_key IS NOT NULL AND status IN ('pending', 'processing')"


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("scheduled_for", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("priority", sa.String(8), nullable=False, server_default="normal"))
        batch.add_column(sa.Column("at_front", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("depends_on", sa.JSON, nullable=True))
        batch.add_column(sa.Column("depends_on_any", sa.JSON, nullable=True))
        batch.add_column(sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("retry_delay", sa.JSON, nullable=True))
        batch.add_column(sa.Column("retry_on", sa.JSON, nullable=True))
        batch.add_column(sa.Column("soft_timeout", sa.Integer, nullable=True))
        batch.add_column(sa.Column("unique_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("attempt_errors", sa.JSON, nullable=True))
        batch.add_column(sa.Column("schedule", sa.String(255), nullable=True))
    op.create_index(
        "ux_job_unique_key_active",
        "job",
        ["unique_key"],
        unique=True,
        sqlite_where=sa.text(UNIQUE_ACTIVE_WHERE),
        postgresql_where=sa.text(UNIQUE_ACTIVE_WHERE),
    )
    op.create_table(
        "job_dependency",
        # No foreign key: rows are short-lived and `TRUNCATE job` must keep working.
        sa.Column("job_id", sa.Integer, primary_key=True),
        sa.Column("depends_on_id", sa.Integer, primary_key=True),
        sa.Column("any_outcome", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_job_dependency_depends_on_id", "job_dependency", ["depends_on_id"])
    op.create_table(
        "schedule",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("every", sa.Integer, nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("next_run_at", UTCDateTime, nullable=False),
        sa.Column("last_run_at", UTCDateTime, nullable=True),
        sa.Column("last_job_id", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_schedule_next_run_at", "schedule", ["next_run_at"])


def downgrade() -> None:
    op.drop_index("ix_schedule_next_run_at", table_name="schedule")
    op.drop_table("schedule")
    op.drop_index("ix_job_dependency_depends_on_id", table_name="job_dependency")
    op.drop_table("job_dependency")
    op.drop_index("ux_job_unique_key_active", table_name="job")
    with op.batch_alter_table("job") as batch:
        for column in (
            "schedule",
            "attempt_errors",
            "unique_key",
            "soft_timeout",
            "retry_on",
            "retry_delay",
            "blocked",
            "depends_on_any",
            "depends_on",
            "at_front",
            "priority",
            "scheduled_for",
        ):
            batch.drop_column(column)
