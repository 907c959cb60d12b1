"""The JobctlError tree: every error a user can see, each with its exit code."""

from __future__ import annotations


class JobctlError(Exception):
    """An error shown to the user as one `Error: ...` line."""

    exit_code = 1


class RefusedError(JobctlError):
    """An operation that is not allowed in the job's current state."""

    exit_code = 1


class JobFailedError(JobctlError):
    """A watched or waited job ended without completing."""

    exit_code = 1


class UsageError(JobctlError):
    """Bad input: an option, value, task or argument that cannot be used."""

    exit_code = 2


class NotFoundError(JobctlError):
    """A job id that does not exist."""

    exit_code = 3


class BackendError(JobctlError):
    """Redis or the database is unreachable or misconfigured."""

    exit_code = 4
