"""`jobctl demo`: two workers, a handful of jobs (one fails by design), live bars, a summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from . import app

if TYPE_CHECKING:
    from rich.table import Table

    from ..demo import DemoRun, Outcome


@app.command()
def demo() -> None:
    """Show jobctl at work: start two workers, run five jobs (one fails by design), summarise, clean up."""
    from .. import demo as showcase
    from ..errors import JobctlError
    from .render import stderr, stdout
    from .watch import watch_jobs

    err = stderr()
    with showcase.signals_interrupt():
        run = showcase.DemoRun.prepare()
        try:
            err.print(_where())
            run.submit()  # first: the workers are --burst workers, leaving once the queue is empty
            run.start_workers()
            err.print(
                f"Submitted {len(run.ids)} `process` jobs (ids {run.ids[0]}-{run.ids[-1]}, one designed to "
                f"fail) and started {len(run.workers)} workers on queue {showcase.DEMO_QUEUE!r}. "
                "Ctrl-C ends the demo, its jobs and its workers."
            )
            with run.guarded():
                code = watch_jobs(run.ids, interval=0.5)
            if run.problem:
                raise JobctlError(run.problem)
            if code == 130:
                raise KeyboardInterrupt
            outcomes = run.outcomes()
        except KeyboardInterrupt:
            run.cancel_unfinished()
            _stop(run)
            err.print("Cancelled the demo's unfinished jobs and stopped its workers.")
            raise
        except BaseException:
            run.cancel_unfinished()
            _stop(run)
            raise
        _stop(run, wait=3.0)
    stdout().print(summary_table(outcomes))
    unexpected = [o for o in outcomes if not o.as_designed]
    if unexpected:
        names = ", ".join(f"job {o.job.id} ({o.job.status}, expected {o.expected})" for o in unexpected)
        raise JobctlError(f"the demo did not go as designed: {names}; see {run.log_dir}")
    failed = next(o.job.id for o in outcomes if o.spec.fails)
    err.print(
        "Demo finished: every job ended as designed (the failure is part of the show).\n"
        f"Next: `jobctl list -q demo`, `jobctl show {failed}` for a failed job, "
        "`jobctl worker` in one terminal and `jobctl submit NAME --watch` in another."
    )


def _where() -> str:
    from ..config import get_settings
    from ..embedded import layout

    settings = get_settings()
    if settings.redis_is_embedded:
        redis = f"embedded Redis ({layout(settings.data_dir).sock})"
    else:
        redis = "the configured Redis"
    database = "SQLite in the data directory" if settings.database_is_embedded else "the configured database"
    return f"jobctl demo: {redis}, records in {database} ({settings.data_dir})."


def _stop(run: DemoRun, wait: float = 0.0) -> None:
    """Stop the demo's workers; after a normal run they are given `wait` seconds to leave by themselves."""
    from .render import stderr

    if run.running_workers(wait):
        stderr().print("Stopping the demo's workers...")
    run.stop()


def summary_table(outcomes: list[Outcome]) -> Table:
    """One row per demo job: id, name, status, steps, duration, and its result or error."""
    from rich.table import Table
    from rich.text import Text

    from .render import duration, one_line, progress_text, status_text

    table = Table(box=None, pad_edge=False, header_style="bold", title="Demo summary", title_justify="left")
    for column in ("ID", "NAME", "STATUS", "STEPS", "DURATION", "OUTCOME"):
        table.add_column(column, justify="right" if column in ("ID", "STEPS", "DURATION") else "left")
    for outcome in outcomes:
        job = outcome.job
        seconds = None
        if job.started_at and job.completed_at:
            seconds = (job.completed_at - job.started_at).total_seconds()
        if job.error:
            detail = one_line(job.error.splitlines()[0])
        elif job.result is not None:
            detail = one_line(json.dumps(job.result))
        else:
            detail = "-"
        if outcome.spec.fails:
            detail += " (by design)"
        table.add_row(
            Text(str(job.id)),
            Text(one_line(job.name)),
            status_text(job.status),
            Text(progress_text(job.progress)),
            Text(duration(seconds)),
            Text(detail),
        )
    return table
