"""The SQL job record, its statuses, and the shape shown to users."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores UTC and always returns timezone-aware datetimes, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(enum.StrEnum):
    """The five states of a job; the last three are terminal."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})


UNIQUE_ACTIVE_INDEX = "ux_job_unique_key_active"
UNIQUE_ACTIVE_WHERE = "unique_key IS NOT NULL AND status IN ('pending', 'processing')"


class Job(SQLModel, table=True):
    """One submitted job: the durable record of what was asked and what happened."""

    __tablename__ = "job"
    __table_args__ = (
        # `list` filters (migration 0004): each index walks its rows newest first and holds the other
        # filter columns, so combined filters are checked without reading the rows.
        sa.Index("ix_job_status_list", "status", "id", "task", "queue"),
        sa.Index("ix_job_task_list", "task", "id", "status", "queue"),
        sa.Index("ix_job_queue_list", "queue", "id", "status", "task"),
        sa.Index("ix_job_created_at_id", "created_at", "id"),  # --since, --sort created
        # ux_job_unique_key_active (migration 0002) is declared by declare_partial_indexes().
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    description: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False, server_default=""))
    task: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    args: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))
    queue: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    status: str = Field(default=JobStatus.PENDING.value, sa_column=sa.Column(sa.String(16), nullable=False))
    task_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    progress: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    result: Any | None = Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True), nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    retries: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    timeout: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    worker: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime, nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    completed_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    # Job control (migration 0002): when the next attempt is due, what it waits for, how it is retried.
    scheduled_for: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    priority: str = Field(
        default="normal", sa_column=sa.Column(sa.String(8), nullable=False, server_default="normal")
    )
    at_front: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    depends_on: list[int] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    depends_on_any: list[int] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    blocked: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    retry_delay: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    retry_on: list[str] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    soft_timeout: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    unique_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    attempt_errors: list[dict[str, Any]] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON, nullable=True)
    )
    schedule: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def to_public(self) -> dict[str, Any]:
        """The job as a JSON-ready object, timestamps in ISO-8601 UTC."""
        out: dict[str, Any] = {}
        for key in PUBLIC_FIELDS:
            value = getattr(self, key)
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def declare_partial_indexes() -> None:
    """Add the partial index the migrations create to `Job`'s table, for Alembic's autogenerate.

    At most one active job per unique key (an idempotency token for scripts). A `postgresql_where`
    makes SQLAlchemy import the PostgreSQL dialect to check it: declared at import time it would cost
    every SQLite command that import, so only the migration environment declares it.
    """
    table = Job.__table__  # type: ignore[attr-defined]
    if any(index.name == UNIQUE_ACTIVE_INDEX for index in table.indexes):
        return
    sa.Index(
        UNIQUE_ACTIVE_INDEX,
        table.c.unique_key,
        unique=True,
        sqlite_where=sa.text(UNIQUE_ACTIVE_WHERE),
        postgresql_where=sa.text(UNIQUE_ACTIVE_WHERE),
    )


PUBLIC_FIELDS = (
    "id",
    "name",
    "description",
    "task",
    "args",
    "queue",
    "status",
    "task_id",
    "progress",
    "result",
    "error",
    "attempts",
    "retries",
    "timeout",
    "worker",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "scheduled_for",
    "priority",
    "at_front",
    "depends_on",
    "depends_on_any",
    "blocked",
    "retry_delay",
    "retry_on",
    "soft_timeout",
    "unique_key",
    "attempt_errors",
    "schedule",
)


class JobDependency(SQLModel, table=True):
    """An unresolved wait: `job_id` may not start before `depends_on_id` ends (rows go once resolved)."""

    __tablename__ = "job_dependency"

    job_id: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    depends_on_id: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, index=True))
    any_outcome: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )


class Schedule(SQLModel, table=True):
    """A recurring job: a cron expression or an interval, and the job each firing creates."""

    __tablename__ = "schedule"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(255), nullable=False, unique=True))
    cron: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    every: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    timezone: str = Field(default="UTC", sa_column=sa.Column(sa.String(64), nullable=False))
    task: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    args: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))
    options: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))
    enabled: bool = Field(
        default=True, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.true())
    )
    next_run_at: datetime = Field(sa_column=sa.Column(UTCDateTime, nullable=False, index=True))
    last_run_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime, nullable=True))
    last_job_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime, nullable=False))


class JobLog(SQLModel, table=True):
    """The captured output of one attempt of a job: its last JOBCTL_LOG_MAX_BYTES (see logs.py)."""

    __tablename__ = "job_log"

    job_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    )
    attempt: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=False))
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    dropped: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    created_at: datetime = Field(default_factory=utcnow, sa_column=sa.Column(UTCDateTime, nullable=False))
