"""Operator commands: logs, wait, stats, prune."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from . import app
from .params import complete_active_id, complete_job_id, complete_status

if TYPE_CHECKING:
    from ..models import Job


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `jobctl logs 5 | head`: the reader has what it wanted.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


@app.command()
def logs(
    ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Jobs; - reads ids from stdin.", autocompletion=complete_job_id),
    ],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until the jobs end.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="Only the last N lines.")] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="This attempt's log (default: the latest).")
    ] = None,
) -> None:
    """Print what jobs printed and logged. Several jobs: each line starts with [ID]."""
    from .. import follow as job_logs
    from .. import service
    from ..ops import unique_ids
    from .params import read_ids

    job_ids = unique_ids(read_ids(ids))
    jobs = [service.get_job(i) for i in job_ids]  # every id is checked before anything is printed
    width = max(len(str(i)) for i in job_ids)

    def prefix(job_id: int) -> str:
        return f"[{job_id}]".ljust(width + 2) + " " if len(job_ids) > 1 else ""

    if follow:
        if attempt is not None:
            from ..errors import UsageError

            raise UsageError("--attempt shows a past attempt: it cannot be combined with --follow")
        for event in job_logs.follow(job_ids, tail):
            if event.line is not None:
                _write(prefix(event.job_id) + event.line + "\n")
            elif event.attempt is not None:
                typer.echo(f"job {event.job_id}: attempt {event.attempt} started", err=True)
            elif event.ended is not None and len(job_ids) > 1:
                typer.echo(f"job {event.job_id} {event.ended}", err=True)
        return
    for job in jobs:
        assert job.id is not None
        number = attempt or job.attempts
        if not number:
            typer.echo(f"job {job.id} has not started yet", err=True)
            continue
        if number > job.attempts:
            typer.echo(f"job {job.id} has no attempt {number} (it has had {job.attempts})", err=True)
            continue
        found = job_logs.read_attempt(job.id, number, tail)
        if found.dropped and tail is None:
            typer.echo(
                f"job {job.id}: {found.dropped} earlier bytes were dropped (JOBCTL_LOG_MAX_BYTES)", err=True
            )
        _write("".join(prefix(job.id) + line + "\n" for line in found.lines))


@app.command()
def wait(
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID...", help="Jobs; - reads ids from stdin.", autocompletion=complete_active_id
        ),
    ],
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Give up after this long (90s, 10m, 2h); exit 1.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Then print the jobs as a JSON array.")] = False,
) -> None:
    """Block until the jobs end; exit 0 only if every one completed (for scripts and CI)."""
    from ..durations import parse_duration
    from ..errors import JobFailedError
    from ..ops import wait_for_jobs
    from .params import print_json, read_ids

    seconds = parse_duration(timeout, what="--timeout") if timeout is not None else None

    def ended(job: Job) -> None:
        reason = (
            f": {(job.error or '').strip().splitlines()[0]}" if job.error and job.status == "failed" else ""
        )
        typer.echo(f"job {job.id} {job.status}{reason}", err=True)

    result = wait_for_jobs(read_ids(ids), timeout=seconds, on_end=ended)
    if as_json:
        print_json([j.to_public() for j in result.jobs])
    if result.timed_out:
        waiting = ", ".join(f"{j.id} ({j.status})" for j in result.unfinished)
        raise JobFailedError(f"timed out after {timeout} waiting for job(s) {waiting}")
    if not result.all_completed:
        raise typer.Exit(1)


@app.command()
def stats(
    since: Annotated[
        str, typer.Option("--since", help="Window: 2h, 7d, or a time (ISO-8601); default the last 24h.")
    ] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Counts by status, throughput, queue depths, workers and run time percentiles per task."""
    from .. import stats as job_stats
    from .params import print_json
    from .render import stdout

    figures = job_stats.collect(since)
    for note in figures.notes:
        typer.echo(f"Note: {note}", err=True)
    if as_json:
        print_json(figures.to_public())
        return
    from .charts import stats_view

    stdout().print(stats_view(figures))


@app.command()
def prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Delete jobs that ended longer ago than this: 7d, 12h, 30m.")
    ],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "-s",
            "--status",
            help="Only jobs in this terminal status; repeatable (default: completed, failed, cancelled).",
            autocompletion=complete_status,
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete old finished job records, their logs, and what Redis still holds of them."""
    from ..durations import format_duration, parse_duration
    from ..errors import RefusedError, UsageError
    from ..ops import plan_prune
    from ..ops import prune as prune_jobs
    from .charts import prune_table
    from .render import stdout

    plan = plan_prune(older_than, status or [])
    age = format_duration(parse_duration(older_than))
    what = ", ".join(plan.statuses)
    if not plan.total:
        typer.echo(f"Nothing to prune: no {what} job ended more than {age} ago.", err=True)
        return
    counts = ", ".join(f"{s} {n}" for s, n in sorted(plan.counts.items()))
    if dry_run:
        stdout().print(prune_table(plan))
        typer.echo(f"Would delete {plan.total} job(s) that ended more than {age} ago ({counts}).", err=True)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("prune deletes records: pass --yes to confirm (stdin is not a terminal)")
        stdout().print(prune_table(plan))
        if not typer.confirm(
            f"Delete {plan.total} job(s) that ended more than {age} ago ({counts})?", err=True
        ):
            raise RefusedError("nothing deleted")
    result = prune_jobs(plan)
    done = ", ".join(f"{s} {n}" for s, n in sorted(result.counts.items())) or "none"
    typer.echo(f"Deleted {result.deleted} job(s) ({done}).", err=True)
    if result.redis_note:
        typer.echo(f"Note: {result.redis_note}", err=True)
