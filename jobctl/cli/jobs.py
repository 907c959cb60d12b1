"""Job commands: submit, list, show, cancel, retry."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import app, control
from .params import (
    CommandAfterDashes,
    Output,
    complete_active_id,
    complete_job_id,
    complete_queue,
    complete_retryable_id,
    complete_status,
    complete_task,
)

if TYPE_CHECKING:
    from ..service import Outcome


def _read_lines(source: str) -> list[str]:
    from ..errors import UsageError

    if source == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {source!r}: {exc}") from None


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Hold off Python's cycle collector while a submission runs: a bulk one allocates a few objects
    per line, all freed by reference counting, and each full collection would rescan every object
    left by start-up (about 0.1 s per 10,000 lines)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@app.command(cls=CommandAfterDashes)
def submit(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A name for the job, shown everywhere.")] = None,
    task: Annotated[
        str, typer.Option("-t", "--task", help="Registered task to run.", autocompletion=complete_task)
    ] = "process",
    arg: Annotated[
        list[str] | None,
        typer.Option("-a", "--arg", help="Task argument KEY=VALUE (JSON when it parses); repeatable."),
    ] = None,
    description: Annotated[str, typer.Option("-d", "--description", help="Free text.")] = "",
    queue: Annotated[
        str | None,
        typer.Option(
            "-q", "--queue", help="Queue (default: JOBCTL_DEFAULT_QUEUE).", autocompletion=complete_queue
        ),
    ] = None,
    timeout: control.Timeout = None,
    retries: Annotated[int, typer.Option("--retries", help="Extra attempts after a failure.")] = 0,
    delay: control.In = None,
    at: control.At = None,
    after: control.After = None,
    after_any: control.AfterAny = None,
    retry_delay: control.RetryDelay = None,
    retry_on: control.RetryOn = None,
    soft_timeout: control.SoftLimit = None,
    priority: control.Priority = None,
    at_front: control.AtFront = False,
    unique_key: control.UniqueKey = None,
    from_file: Annotated[
        str | None, typer.Option("--from", help="JSON Lines file of jobs to submit ('-' for stdin).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job object(s) as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("-w", "--watch", help="Then watch the new job(s) and exit with watch's code.")
    ] = False,
    progress_pattern: Annotated[
        str | None,
        typer.Option(
            "--progress-pattern",
            help="With -- CMD: a regex turning output lines into progress, e.g. '(\\d+)%'.",
        ),
    ] = None,
) -> None:
    """Store a pending job, put it on its queue, and print its id. After --, a command to run
    on a worker started with --allow-shell (a shell job): `submit build -- make -j4`."""
    from .. import service
    from ..errors import UsageError
    from .params import apply_command, print_json

    defaults = control.job_request(
        name=name or "",
        task=task,
        arg=arg,
        description=description,
        queue=queue,
        timeout=timeout,
        soft_timeout=soft_timeout,
        retries=retries,
        retry_delay=retry_delay,
        retry_on=retry_on,
        priority=priority,
        at_front=at_front,
        unique_key=unique_key,
        delay=delay,
        at=at,
        after=after,
        after_any=after_any,
    )
    if apply_command(ctx, defaults, progress_pattern, from_file):
        name = defaults.name
    if from_file is not None and name is not None:
        raise UsageError("give either NAME or --from, not both")
    if from_file is None and name is None:
        raise UsageError("missing NAME (or --from FILE)")
    with _no_cycle_collection():
        requests = [defaults]
        if from_file is not None:
            from ..jsonlines import parse_job_lines

            requests = parse_job_lines(_read_lines(from_file), defaults)
        if as_json:
            data = [j.to_public() for j in service.submit_jobs(requests)]
            print_json(data if from_file is not None else data[0])
            ids = [item["id"] for item in data]
        else:
            ids = service.submit_ids(requests)  # no job objects: thousands of lines stay fast
            sys.stdout.write("".join(f"{i}\n" for i in ids))
    if watch:
        from .watch import watch_jobs

        sys.stdout.flush()
        code = watch_jobs(ids)
        if code:
            raise typer.Exit(code)


@app.command("list")
def list_(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "-s", "--status", help="Only jobs in this status; repeatable.", autocompletion=complete_status
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option("-t", "--task", help="Only jobs of this task.", autocompletion=complete_task)
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option("-q", "--queue", help="Only jobs on this queue.", autocompletion=complete_queue),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many jobs (1-1000).")] = 100,
    offset: Annotated[
        int, typer.Option("--offset", help="Skip this many jobs (at most 10000; further back: --before).")
    ] = 0,
    before: Annotated[
        int | None,
        typer.Option(
            "--before", metavar="ID", help="Only jobs older than job ID (the page after one ending at ID)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print an array of job objects.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the table in place until Ctrl-C.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Only jobs created since: 2h, 7d, or a time (ISO-8601).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Only jobs whose name matches this glob (* and ?, any case).")
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            help="Sort by id, name, task, status, queue, attempts, created, started, "
            "completed, updated or duration; -KEY descending; several, comma-separated.",
        ),
    ] = None,
    output: Annotated[
        Output | None, typer.Option("-o", "--output", help="table, json, jsonl, or ids (one per line).")
    ] = None,
) -> None:
    """List jobs, newest first."""
    from .. import service
    from .params import print_json

    def fetch() -> list[service.JobView]:
        statuses = [s.lower() for s in status or []]
        return service.list_jobs(
            statuses=statuses,
            task=task,
            queue_name=queue,
            limit=limit,
            offset=offset,
            since=since,
            name=name,
            sort=sort,
            before=before,
        )

    if watch:
        from ..errors import UsageError
        from .watch import watch_list

        if as_json or output not in (None, Output.table):
            raise UsageError("--watch draws the table; it cannot be combined with --json or --output")
        raise typer.Exit(watch_list(fetch))
    views = fetch()
    if output in (Output.jsonl, Output.ids):
        from .params import print_views

        print_views(views, output)
    elif as_json or output is Output.json:
        print_json([v.to_public() for v in views])
    elif views:
        from .render import jobs_table, stdout

        stdout().print(jobs_table(views))
    else:
        typer.echo("No jobs.", err=True)


@app.command()
def show(
    job_id: Annotated[
        int, typer.Argument(metavar="ID", help="The job's id.", autocompletion=complete_job_id)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job object as JSON.")] = False,
) -> None:
    """Show every field of a job, with live progress while it runs."""
    from .. import service
    from .params import print_json

    view = service.show_job(job_id)
    if as_json:
        print_json(view.to_public())
    else:
        from .render import job_detail, stdout

        stdout().print(job_detail(view))


def _report(outcomes: list[Outcome]) -> None:
    from .. import service

    for outcome in outcomes:
        if outcome.ok:
            typer.echo(outcome.message, err=True)
        else:
            typer.echo(f"Error: {outcome.message}", err=True)
    code = service.worst_exit(outcomes)
    if code:
        raise typer.Exit(code)


@app.command()
def cancel(
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID...", help="Jobs to cancel; - reads ids from stdin.", autocompletion=complete_active_id
        ),
    ],
) -> None:
    """Cancel jobs: pending ones never start, running ones are stopped."""
    from .. import service
    from .params import read_ids

    _report([service.cancel_job(i) for i in read_ids(ids)])


@app.command()
def retry(
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID...",
            help="Jobs to retry; - reads ids from stdin.",
            autocompletion=complete_retryable_id,
        ),
    ],
) -> None:
    """Queue failed or cancelled jobs again for another attempt."""
    from .. import service
    from .params import read_ids

    _report([service.retry_job(i) for i in read_ids(ids)])
