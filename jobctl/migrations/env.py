"""Alembic environment: runs migrations on the connection jobctl hands it, or on the configured URL."""

from __future__ import annotations

from alembic import context

from jobctl.config import get_settings
from jobctl.models import Job, declare_partial_indexes

declare_partial_indexes()
target_metadata = Job.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        from jobctl.store import make_engine

        engine = make_engine(get_settings().resolved_database_url())
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
