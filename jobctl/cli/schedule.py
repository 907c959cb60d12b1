"""`jobctl schedule`: recurring jobs (add, list, remove), fired by the workers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import LeanGroup, app, control

if TYPE_CHECKING:
    from ..models import Schedule

schedule_app = typer.Typer(
    cls=LeanGroup,
    name="schedule",
    help="Recurring jobs: each firing creates an ordinary job (workers fire them).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(schedule_app, name="schedule")


def _public(schedule: Schedule) -> dict[str, Any]:
    out = schedule.model_dump()
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


@schedule_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A unique name for the schedule (and its jobs).")],
    cron: Annotated[
        str | None,
        typer.Option("--cron", help="Cron expression, e.g. '*/5 * * * *' (an optional 6th field: seconds)."),
    ] = None,
    every: Annotated[str | None, typer.Option("--every", help="Or an interval: 30s, 10m, 1h.")] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="Zone the cron times are in (default: the local zone).")
    ] = None,
    task: Annotated[str, typer.Option("-t", "--task", help="Registered task to run.")] = "process",
    arg: Annotated[
        list[str] | None,
        typer.Option("-a", "--arg", help="Task argument KEY=VALUE (JSON when it parses); repeatable."),
    ] = None,
    description: Annotated[str, typer.Option("-d", "--description", help="Free text.")] = "",
    queue: Annotated[
        str | None, typer.Option("-q", "--queue", help="Queue (default: JOBCTL_DEFAULT_QUEUE).")
    ] = None,
    job_name: Annotated[
        str | None, typer.Option("--job-name", help="Name of the jobs it creates (default: NAME).")
    ] = None,
    timeout: control.Timeout = None,
    soft_timeout: control.SoftLimit = None,
    retries: control.Retries = 0,
    retry_delay: control.RetryDelay = None,
    retry_on: control.RetryOn = None,
    priority: control.Priority = None,
    at_front: control.AtFront = False,
    unique_key: Annotated[
        str | None,
        typer.Option("--unique-key", help="Skip a firing while the job of an earlier one is still active."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the schedule as JSON.")] = False,
) -> None:
    """Add a recurring job: --cron EXPR or --every DURATION."""
    from .. import scheduling
    from .params import print_json
    from .render import relative

    request = control.job_request(
        name=job_name or name,
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
    )
    schedule = scheduling.add_schedule(name, scheduling.ScheduleSpec(cron=cron, every=every, tz=tz), request)
    if as_json:
        print_json(_public(schedule))
    next_run = schedule.next_run_at.isoformat(timespec="seconds")
    typer.echo(
        f"added schedule {schedule.name!r} ({scheduling.describe(schedule)}); "
        f"next run {next_run} ({relative(schedule.next_run_at)})",
        err=True,
    )


@schedule_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print an array of schedules.")] = False,
) -> None:
    """List recurring jobs with their next and last runs."""
    from rich.table import Table
    from rich.text import Text

    from .. import scheduling
    from .params import print_json
    from .render import one_line, relative, stdout

    schedules = scheduling.list_schedules()
    if as_json:
        print_json([_public(s) for s in schedules])
        return
    if not schedules:
        typer.echo("No schedules.", err=True)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "WHEN", "TASK", "NEXT RUN", "LAST RUN", "LAST JOB"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    now = datetime.now(UTC)
    for s in schedules:
        table.add_row(
            Text(one_line(s.name)),
            Text(scheduling.describe(s)),
            Text(s.task),
            Text(f"{s.next_run_at.isoformat(timespec='seconds')} ({relative(s.next_run_at, now)})"),
            Text(relative(s.last_run_at, now)),
            Text(str(s.last_job_id) if s.last_job_id else "-"),
        )
    stdout().print(table)


@schedule_app.command("remove")
def remove(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Schedules to remove.")],
) -> None:
    """Remove schedules (jobs they already created are kept)."""
    from .. import scheduling
    from ..errors import JobctlError

    code = 0
    for name in names:
        try:
            scheduling.remove_schedule(name)
            typer.echo(f"removed schedule {name!r}", err=True)
        except JobctlError as exc:
            typer.echo(f"Error: {exc}", err=True)
            code = max(code, exc.exit_code)
    if code:
        raise typer.Exit(code)
