"""Worker commands: run workers, list live workers."""

from __future__ import annotations

from typing import Annotated

import typer

from . import app
from .params import complete_queue


@app.command()
def worker(
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "-q",
            "--queue",
            help="Queue to serve, in priority order; repeatable.",
            autocompletion=complete_queue,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("-c", "--concurrency", min=1, max=64, help="Number of worker processes.")
    ] = 1,
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queues are empty.")] = False,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Restart a worker after this many jobs.")
    ] = None,
    allow_shell: Annotated[
        bool,
        typer.Option(
            "--allow-shell",
            help="Also run shell-command jobs (each queue's QUEUE.shell). Anyone who can submit jobs "
            "can then run any command as this worker's user.",
        ),
    ] = False,
    fork: Annotated[
        bool,
        typer.Option(
            "--fork/--no-fork",
            help="Run each job in a forked work-horse (the default), or in the worker's own process: "
            "faster for short jobs, but tasks share the worker's memory, and one that ignores its "
            "cancel or time limit cannot be killed without stopping the worker.",
        ),
    ] = True,
) -> None:
    """Run workers (with the scheduler). SIGTERM/Ctrl-C finishes current jobs; a second one stops them."""
    from .. import shell
    from ..config import get_settings
    from ..errors import UsageError
    from ..tasks import load_task_modules
    from ..worker import run_workers

    for name in queue or []:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"invalid queue name {name!r}")
    load_task_modules(get_settings().task_modules)
    names = shell.worker_queues(queue or [get_settings().default_queue], allow_shell)
    if allow_shell:
        shell.allow_in_this_process()
    run_workers(names, concurrency=concurrency, burst=burst, max_jobs=max_jobs, fork=fork)


@app.command()
def workers() -> None:
    """List live workers: name, host, pid, queues, state, current job."""
    from rich.table import Table
    from rich.text import Text

    from ..queue import list_workers, parse_rq_job_id
    from .render import stdout

    found = list_workers()
    if not found:
        typer.echo("No workers are running.", err=True)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "HOST", "PID", "QUEUES", "STATE", "JOB"):
        table.add_column(column)
    for w in found:
        parsed = parse_rq_job_id(w.current_job) if w.current_job else None
        job = str(parsed[0]) if parsed else (w.current_job or "-")
        table.add_row(
            Text(w.name), Text(w.hostname), str(w.pid or "-"), Text(",".join(w.queues)), Text(w.state), job
        )
    stdout().print(table)
