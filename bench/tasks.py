"""Tasks the benchmarks register through JOBCTL_TASKS."""

from __future__ import annotations

from jobctl import task


@task(name="bench.noop")
def noop() -> None:
    """Do nothing (the benchmarks' unit of work)."""
