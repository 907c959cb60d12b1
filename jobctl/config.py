"""Settings from the environment and `.env`, and the URLs they resolve to."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("jobctl", appauthor=False))


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every setting jobctl reads; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    postgres_server: str | None = Field(None, validation_alias=_env("POSTGRES_SERVER"))
    postgres_port: int = Field(5432, validation_alias=_env("POSTGRES_PORT"))
    postgres_user: str = Field("postgres", validation_alias=_env("POSTGRES_USER"))
    postgres_password: str = Field("", validation_alias=_env("POSTGRES_PASSWORD"))
    postgres_db: str = Field("jobctl", validation_alias=_env("POSTGRES_DB"))

    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    redis_host: str | None = Field(None, validation_alias=_env("REDIS_HOST"))
    redis_port: int = Field(6379, validation_alias=_env("REDIS_PORT"))
    redis_db: int = Field(0, validation_alias=_env("REDIS_DB"))
    redis_password: str | None = Field(None, validation_alias=_env("REDIS_PASSWORD"))
    redis_ssl: bool = Field(False, validation_alias=_env("REDIS_SSL"))

    tasks: str = Field("", validation_alias=_env("JOBCTL_TASKS"))
    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias=_env("JOBCTL_DATA_DIR"))
    default_queue: str = Field("default", validation_alias=_env("JOBCTL_DEFAULT_QUEUE"))
    job_timeout: int = Field(1800, ge=1, validation_alias=_env("JOBCTL_JOB_TIMEOUT"))
    # Raised as SoftTimeout inside the task when below the job's hard timeout; 0 turns it off.
    soft_timeout: int = Field(1500, ge=0, validation_alias=_env("JOBCTL_SOFT_TIMEOUT"))
    result_ttl: int = Field(3600, ge=0, validation_alias=_env("JOBCTL_RESULT_TTL"))
    worker_max_jobs: int = Field(1000, ge=1, validation_alias=_env("JOBCTL_WORKER_MAX_JOBS"))
    cancel_grace: float = Field(1.0, ge=0, validation_alias=_env("JOBCTL_CANCEL_GRACE"))
    progress_interval: float = Field(0.25, ge=0, validation_alias=_env("JOBCTL_PROGRESS_INTERVAL"))
    reconcile_interval: float = Field(15.0, gt=0, validation_alias=_env("JOBCTL_RECONCILE_INTERVAL"))
    lost_after: float = Field(45.0, gt=0, validation_alias=_env("JOBCTL_LOST_AFTER"))
    dashboard_username: str | None = Field(None, validation_alias=_env("JOBCTL_DASHBOARD_USERNAME"))
    dashboard_password: str | None = Field(None, validation_alias=_env("JOBCTL_DASHBOARD_PASSWORD"))
    log_max_bytes: int = Field(1_000_000, ge=0, validation_alias=_env("JOBCTL_LOG_MAX_BYTES"))

    @property
    def task_modules(self) -> list[str]:
        """The modules named in JOBCTL_TASKS."""
        return [m.strip() for m in self.tasks.split(",") if m.strip()]

    @property
    def database_is_embedded(self) -> bool:
        """True when no database is configured and records go to SQLite in the data directory."""
        return not self.database_url and not self.postgres_server

    @property
    def redis_is_embedded(self) -> bool:
        """True when no Redis is configured and jobctl runs its own server."""
        return not self.redis_url and not self.redis_host

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL records go to."""
        if self.database_url:
            url = self.database_url
            for plain in ("postgres://", "postgresql://"):
                if url.startswith(plain):
                    # psycopg2 is the driver jobctl ships with
                    url = "postgresql+psycopg2://" + url[len(plain) :]
            return url
        if self.postgres_server:
            auth = quote(self.postgres_user, safe="")
            if self.postgres_password:
                auth += ":" + quote(self.postgres_password, safe="")
            return (
                f"postgresql+psycopg2://{auth}@{self.postgres_server}:{self.postgres_port}/{self.postgres_db}"
            )
        return f"sqlite:///{self.data_dir / 'jobctl.db'}"

    def resolved_redis_url(self) -> str | None:
        """The Redis URL, or None when the embedded server is used."""
        if self.redis_url:
            return self.redis_url
        if self.redis_host:
            scheme = "rediss" if self.redis_ssl else "redis"
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"
        return None


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once on first use."""
    from pydantic import ValidationError

    from .errors import UsageError

    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error.get("loc") else "?"
        raise UsageError(f"invalid setting {name}: {error['msg']} (got {error.get('input')!r})") from None
