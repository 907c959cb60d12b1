"""Job-control options shared by `submit` and `schedule add`, and how a job's control fields are shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.text import Text

    from ..models import Job
    from ..service import JobRequest, JobView

Timeout = Annotated[
    str | None,
    typer.Option("--timeout", help="Hard time limit: seconds or a duration (90, 10m); the job is killed."),
]
SoftLimit = Annotated[
    str | None,
    typer.Option("--soft-timeout", help="Raise SoftTimeout inside the task after this long, to clean up."),
]
Retries = Annotated[int, typer.Option("--retries", help="Extra attempts after a failure.")]
RetryDelay = Annotated[
    str | None,
    typer.Option(
        "--retry-delay",
        help="Wait before each retry: seconds (30), a list (10,30,60) or exponential (exp, exp:BASE:CAP).",
    ),
]
RetryOn = Annotated[
    list[str] | None,
    typer.Option("--retry-on", help="Retry only these exception types (e.g. ConnectionError); repeatable."),
]
Priority = Annotated[
    str | None, typer.Option("--priority", help="high, normal or low: workers take high jobs first.")
]
AtFront = Annotated[bool, typer.Option("--at-front", help="Put the job first in line on its queue.")]
UniqueKey = Annotated[
    str | None,
    typer.Option("--unique-key", help="Refuse this job (exit 1) while another active job has this key."),
]
In = Annotated[str | None, typer.Option("--in", help="Start after a delay: 30s, 10m, 2h, 1h30m.")]
At = Annotated[
    str | None,
    typer.Option("--at", help="Start at a time: 2026-12-01T09:00, 'tomorrow 09:00', 17:30 (local zone)."),
]
After = Annotated[
    list[int] | None,
    typer.Option("--after", help="Start after job ID completes (cancelled if it fails); repeatable."),
]
AfterAny = Annotated[
    list[int] | None, typer.Option("--after-any", help="Start after job ID ends, whatever the outcome.")
]


def job_request(
    *,
    arg: list[str] | None,
    after: list[int] | None = None,
    after_any: list[int] | None = None,
    **options: Any,
) -> JobRequest:
    """The job the shared job options describe (`submit`, `schedule add`): `-a` assignments parsed,
    the rest as given."""
    from .. import service

    args = service.parse_assignments(arg or [])
    return service.JobRequest(args=args, after=list(after or []), after_any=list(after_any or []), **options)


def _in(when: datetime, now: datetime) -> str:
    from .render import duration

    return "in " + duration(max(0.0, (when - now).total_seconds()))


def pending_note(job: Job, now: datetime | None = None) -> str:
    """What a pending job waits for: `waiting for 3, 4`, `due in 5m00s`, `retry 2 in 8.0s`; else ''."""
    if job.status != "pending":
        return ""
    now = now or datetime.now(UTC)
    if job.blocked:
        deps = [*(job.depends_on or []), *(job.depends_on_any or [])]
        return "waiting for " + ", ".join(map(str, deps))
    if job.scheduled_for is not None and job.scheduled_for > now:
        if job.attempts:
            return f"retry {job.attempts + 1} {_in(job.scheduled_for, now)}"
        return f"due {_in(job.scheduled_for, now)}"
    return ""


def detail_rows(view: JobView) -> list[tuple[str, Text]]:
    """The `jobctl show` lines for job control: due time, waits, priority, retry policy, limits, errors."""
    from rich.text import Text

    from ..backoff import describe_delay
    from .render import _stamp

    job = view.job
    rows: list[tuple[str, Text]] = []
    if job.scheduled_for is not None:
        label = "due" if job.status == "pending" else "was due"
        rows.append((label, Text(_stamp(job.scheduled_for))))
    if job.depends_on or job.depends_on_any:
        parts = [f"{d} (must complete)" for d in job.depends_on or []]
        parts += [f"{d} (any outcome)" for d in job.depends_on_any or []]
        rows.append(("after", Text(", ".join(parts))))
    waiting = getattr(view, "waiting_for", None)
    if job.status == "pending" and job.blocked:
        rows.append(("waiting for", Text(", ".join(map(str, waiting or [])) or "-")))
    if job.priority != "normal" or job.at_front:
        rows.append(("priority", Text(job.priority + (", at the front" if job.at_front else ""))))
    if job.retries:
        policy = describe_delay(job.retry_delay)
        if job.retry_on:
            policy += "; only on " + ", ".join(job.retry_on)
        rows.append(("retry delay", Text(policy)))
    if job.soft_timeout:
        rows.append(("soft timeout", Text(f"{job.soft_timeout}s")))
    if job.unique_key is not None:
        rows.append(("unique key", Text(job.unique_key)))
    if job.schedule:
        rows.append(("schedule", Text(job.schedule)))
    for entry in job.attempt_errors or []:
        first = next((line for line in str(entry.get("error", "")).splitlines() if line.strip()), "")
        rows.append((f"attempt {entry.get('attempt')}", Text(first, style="red")))
    return rows
