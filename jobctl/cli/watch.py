"""`jobctl watch` and `list --watch`: live bars in a terminal, one plain line per change elsewhere."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import app
from .params import complete_active_id

if TYPE_CHECKING:
    from ..service import JobView
    from ..watching import Change, Counts, WatchedJob, Watcher

STOPPED = "Stopped watching; the jobs keep running."
HIGHLIGHT_SECONDS = 2.0


def is_live_terminal() -> bool:
    """True when stdout is a terminal that can redraw in place."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _pause(until: float) -> None:
    time.sleep(max(0.0, until - time.monotonic()))


# ---------------------------------------------------------------- jobctl watch


def watch_jobs(ids: list[int] | None, *, interval: float = 0.5, follow: bool = False) -> int:
    """Watch jobs (every active one when `ids` is empty) until all are terminal; returns the exit code."""
    from ..watching import Watcher

    watcher = Watcher(ids or None, follow=follow)
    try:
        changes = watcher.start()
        if not watcher.rows and not follow:
            typer.echo("No active jobs to watch.", err=True)
            return 0
        if is_live_terminal():
            return _watch_live(watcher, interval)
        if follow:
            typer.echo("Watching for new jobs; Ctrl-C to stop.", err=True)
        return _watch_plain(watcher, changes, interval)
    except KeyboardInterrupt:
        typer.echo(STOPPED, err=True)
        return 130


def _watch_live(watcher: Watcher, interval: float) -> int:
    from rich.live import Live

    from .render import stdout
    from .watchview import watch_view

    console = stdout()
    with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
        started = time.monotonic()
        while True:
            live.update(watch_view(watcher, console.size.width, console.size.height), refresh=True)
            if watcher.finished:
                break
            _pause(started + interval)
            started = time.monotonic()
            watcher.tick()
    return watcher.exit_code()


def _watch_plain(watcher: Watcher, changes: list[Change], interval: float) -> int:
    out = _plain_writer()
    try:
        started = time.monotonic()
        while True:
            if changes:
                out("".join(plain_line(c) + "\n" for c in changes))
            if watcher.finished:
                break
            _pause(started + interval)
            started = time.monotonic()
            changes = watcher.tick()
        out(summary_text(watcher.counts()) + "\n")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as if interrupted.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 130
    return watcher.exit_code()


def _plain_writer() -> Callable[[str], None]:
    stream = sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(text: str) -> None:
        # A log file in a narrow encoding gets `?` for ✓/✗ rather than a crash.
        stream.write(text.encode(encoding, "replace").decode(encoding))
        stream.flush()

    return write


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def status_words(row: WatchedJob) -> str:
    """The status with what matters about it: queue place, worker, outcome and error."""
    from .render import duration

    status = row.status
    if status == "pending":
        from .control import pending_note

        if note := pending_note(row.job):  # due later, a retry's backoff, or waiting on other jobs
            return f"pending, {note}"
        if row.position is not None:
            return f"pending, #{row.position} in queue {row.job.queue}"
        return {
            "started": "pending, starting on a worker",
            "scheduled": "pending, scheduled",
            "deferred": "pending, waiting on a dependency",
        }.get(row.rq_status or "", "pending")
    if status == "processing":
        return f"processing on {row.job.worker}" if row.job.worker else "processing"
    if status == "completed":
        elapsed = row.elapsed()
        return "completed ✓" + (f" in {duration(elapsed)}" if elapsed is not None else "")
    if status == "failed":
        error = row.error_line()
        return "failed ✗" + (f": {error}" if error else "")
    return status


def progress_words(progress: dict[str, Any] | None) -> str:
    """`3/10 30% message`, `7 message` without a total."""
    from ..watching import percent
    from .render import progress_text

    if not progress:
        return "-"
    text = progress_text(progress)
    pct = percent(progress)
    if pct is not None:
        text += f" {pct:.0f}%"
    if progress.get("message"):
        text += f" {progress['message']}"
    return text


def plain_line(change: Change) -> str:
    """One log line for a status change or a progress step; the name JSON-quoted, so one line, literal."""
    row = change.row
    what = status_words(row) if change.kind == "status" else progress_words(row.progress)
    name = json.dumps(row.job.name, ensure_ascii=False)
    return f"{_clock()} job {row.id} {name} {_one_line(what)}"


def _one_line(text: str) -> str:
    from .render import one_line

    return one_line(text)


def summary_text(c: Counts) -> str:
    """`running 2 · pending 3 · done 5 · failed 1 · cancelled 0`."""
    return (
        f"running {c.running} · pending {c.pending} · done {c.completed} · "
        f"failed {c.failed} · cancelled {c.cancelled}"
    )


@app.command()
def watch(
    ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID", help="Jobs to watch (default: every active job).", autocompletion=complete_active_id
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, max=3600, help="Seconds between refreshes.")
    ] = 0.5,
    follow: Annotated[
        bool, typer.Option("--follow", help="Without IDs: keep waiting for new jobs until Ctrl-C.")
    ] = False,
) -> None:
    """Watch jobs live until they end: exit 0 if all completed, 1 otherwise; Ctrl-C stops watching only."""
    code = watch_jobs(ids or None, interval=interval, follow=follow)
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------- jobctl list --watch


def watch_list(fetch: Callable[[], list[JobView]], *, interval: float = 0.5) -> int:
    """Refresh the list table in place (rows whose status changed highlighted briefly) until Ctrl-C."""
    views = fetch()  # bad filters fail here, before anything is drawn
    try:
        if is_live_terminal():
            _list_live(fetch, views, interval)
        else:
            _list_plain(fetch, views, interval)
    except KeyboardInterrupt:
        typer.echo("Stopped watching.", err=True)
    return 130


def _list_live(fetch: Callable[[], list[JobView]], views: list[JobView], interval: float) -> None:
    from rich.live import Live

    from .render import stdout
    from .watchview import list_view

    console = stdout()
    seen = {v.job.id: v.job.status for v in views}
    lit: dict[int, float] = {}
    with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            now = time.monotonic()
            for v in views:
                if v.job.id is not None and seen.get(v.job.id) != v.job.status:
                    lit[v.job.id] = now + HIGHLIGHT_SECONDS
                    seen[v.job.id] = v.job.status
            highlighted = {job_id for job_id, until in lit.items() if until > now}
            live.update(list_view(views, highlighted, interval, console.size.height), refresh=True)
            _pause(now + interval)
            views = fetch()


def _list_plain(fetch: Callable[[], list[JobView]], views: list[JobView], interval: float) -> None:
    from .render import jobs_table, stdout

    if views:
        stdout().print(jobs_table(views))
    sys.stdout.flush()
    out = _plain_writer()
    seen = {v.job.id: v.job.status for v in views}
    while True:
        _pause(time.monotonic() + interval)
        lines = []
        for v in reversed(fetch()):
            before = seen.get(v.job.id)
            if before != v.job.status:
                change = f"{before} → {v.job.status}" if before else f"new, {v.job.status}"
                name = json.dumps(v.job.name, ensure_ascii=False)
                lines.append(f"{_clock()} job {v.job.id} {name} {change}\n")
                seen[v.job.id] = v.job.status
        if lines:
            out("".join(lines))
