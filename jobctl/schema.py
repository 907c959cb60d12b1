"""The database schema: which Alembic revision a database is at, and upgrading it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from .config import get_settings, mask_url
from .errors import BackendError
from .store import backend_error, make_engine

HEAD_REVISION = "0007"


def ensure_schema(engine: Engine, url: str) -> None:
    """Check the database is at HEAD_REVISION; SQLite databases are brought there."""
    try:
        revision = current_revision(engine)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise backend_error(url, exc) from None
    if revision == HEAD_REVISION:
        return
    if engine.dialect.name == "sqlite":
        upgrade_schema(engine)
        return
    raise BackendError(
        f"the database at {mask_url(url)} has schema {revision or 'none'}, expected {HEAD_REVISION}: "
        "run `jobctl db upgrade`"
    )


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    # Every command checks this: one plain query, and the catalog (a slow query on PostgreSQL) only
    # when it fails, to tell an empty database from a real error.
    with engine.connect() as conn:
        try:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except (sa_exc.ProgrammingError, sa_exc.OperationalError):
            conn.rollback()
            if sa.inspect(conn).has_table("alembic_version"):
                raise
            return None


def upgrade_schema(engine: Engine | None = None) -> str:
    """Apply every Alembic migration; returns the revision reached."""
    from alembic import command
    from alembic.config import Config

    url = get_settings().resolved_database_url()
    engine = engine or make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", "jobctl:migrations")
    try:
        with _schema_lock(engine), engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise backend_error(url, exc) from None
    return current_revision(engine) or ""


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations between processes sharing one SQLite file."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(database + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
