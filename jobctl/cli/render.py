"""Tables and text for jobs, workers, tasks and checks. Job-supplied text is always shown literally."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .control import detail_rows, pending_note

if TYPE_CHECKING:
    from ..service import JobView
    from ..system import Check

STATUS_STYLE = {
    "pending": "yellow",
    "processing": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def stdout() -> Console:
    """A console on stdout that never interprets markup or highlights data."""
    # Piped output is not cut to 80 columns: scripts and grep see whole rows.
    width = None if sys.stdout.isatty() else 1000
    return Console(markup=False, highlight=False, emoji=False, soft_wrap=False, width=width)


def stderr() -> Console:
    """A console for messages on stderr."""
    return Console(stderr=True, markup=False, highlight=False, emoji=False)


def relative(when: datetime | None, now: datetime | None = None) -> str:
    """`5s ago`, `3m ago`, `2h ago`, `4d ago`."""
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def duration(seconds: float | None) -> str:
    """A short human duration: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def job_duration(view: JobView, now: datetime | None = None) -> float | None:
    """Seconds a job ran (so far, when it is still running)."""
    job = view.job
    if job.started_at is None:
        return None
    end = job.completed_at or now or datetime.now(UTC)
    return max(0.0, (end - job.started_at).total_seconds())


def progress_text(progress: dict[str, Any] | None) -> str:
    """`4/10`, or `4` with no total, or `-`."""
    if not progress:
        return "-"
    current, total = progress.get("current"), progress.get("total")
    return f"{current}/{total}" if total is not None else f"{current}"


def status_text(status: str, note: str = "") -> Text:
    """The status, coloured, with an optional note: `pending (due in 5m00s)`."""
    return Text(status + (f" ({note})" if note else ""), style=STATUS_STYLE.get(status, ""))


JOB_COLUMNS = ("ID", "NAME", "TASK", "STATUS", "PROGRESS", "CREATED", "DURATION")
NAME_WIDTH = 40


def jobs_table(views: list[JobView]) -> Rows:
    """The `jobctl list` table."""
    now = datetime.now(UTC)
    rows = [
        [
            Text(str(view.job.id)),
            Text(one_line(view.job.name)),
            Text(view.job.task),
            status_text(view.job.status, pending_note(view.job, now)),
            Text(progress_text(view.progress)),
            Text(relative(view.job.created_at, now)),
            Text(duration(job_duration(view, now))),
        ]
        for view in views
    ]
    return Rows(JOB_COLUMNS, rows, right=("ID", "PROGRESS"), max_widths={"NAME": NAME_WIDTH})


class Rows:
    """A table of one-line cells: `rich.table.Table(box=None, pad_edge=False)` with a bold header and
    cells cut with an ellipsis. Where it fits the console it is written here, column by column, as
    that Table would lay it out (the Table measures and renders every cell: about 0.6 ms a row);
    otherwise the Table itself narrows the columns. `row_styles`: a style for some rows, by index."""

    def __init__(
        self,
        headers: tuple[str, ...],
        rows: list[list[Text]],
        *,
        right: tuple[str, ...] = (),
        max_widths: dict[str, int] | None = None,
    ) -> None:
        self.headers, self.rows, self.right = headers, rows, right
        self.max_widths = max_widths or {}
        self.row_styles: dict[int, str] = {}

    def table(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for header in self.headers:
            table.add_column(
                header,
                justify="right" if header in self.right else "left",
                overflow="ellipsis",
                no_wrap=True,
                max_width=self.max_widths.get(header),
            )
        for index, row in enumerate(self.rows):
            table.add_row(*row, style=self.row_styles.get(index))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = []
        for i, header in enumerate(self.headers):
            width = max([len(header), *(row[i].cell_len for row in self.rows)])
            widths.append(min(width, self.max_widths.get(header, width)))
        if sum(widths) + 2 * (len(widths) - 1) > options.max_width:
            yield self.table()
            return
        lines = [(Style(bold=True), [Text(h) for h in self.headers])]
        lines += [(console.get_style(self.row_styles.get(i, "")), row) for i, row in enumerate(self.rows)]
        for style, cells in lines:
            for i, text in enumerate(cells):
                if i:
                    yield Segment("  ", style)
                base = style + console.get_style(text.style)
                cell = text.copy()
                cell.truncate(widths[i], overflow="ellipsis")
                cell.align("right" if self.headers[i] in self.right else "left", widths[i])
                for segment in cell.render(console):  # the text's own spans, over its style
                    yield Segment(segment.text, base + segment.style if segment.style else base)
            yield Segment.line()


def one_line(text: str) -> str:
    """Control characters made visible so one job stays on one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def job_detail(view: JobView) -> Table:
    """The `jobctl show` view: every field."""
    job = view.job
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    progress = view.progress
    rows: list[tuple[str, Text]] = [
        ("id", Text(str(job.id))),
        ("name", Text(job.name)),
        ("description", Text(job.description or "-")),
        ("task", Text(job.task)),
        ("args", Text(json.dumps(job.args, ensure_ascii=False))),
        ("queue", Text(job.queue)),
        ("status", status_text(job.status, pending_note(job))),
        ("progress", Text(progress_line(progress))),
        ("attempts", Text(f"{job.attempts} (retries allowed: {job.retries})")),
        ("worker", Text(job.worker or "-")),
        ("task id", Text(job.task_id or "-")),
        ("timeout", Text(f"{job.timeout}s" if job.timeout else "default")),
        ("created", Text(_stamp(job.created_at))),
        ("started", Text(_stamp(job.started_at))),
        ("completed", Text(_stamp(job.completed_at))),
        ("duration", Text(duration(job_duration(view)))),
    ]
    if view.live is not None and not job.job_status.is_terminal and not job.blocked:  # blocked: not queued
        state = view.live.rq_status or "missing"
        if view.live.position is not None:
            state += f", position {view.live.position + 1} in queue {job.queue!r}"
        rows.append(("rq state", Text(state)))
    rows.extend(detail_rows(view))
    if job.result is not None:
        rows.append(("result", Text(json.dumps(job.result, ensure_ascii=False, indent=2))))
    if job.error:
        rows.append(("error", Text(job.error, style="red")))
    for key, value in rows:
        table.add_row(key, value)
    return table


def progress_line(progress: dict[str, Any] | None) -> str:
    """`4/10 (40%) resized x.png`."""
    if not progress:
        return "-"
    text = progress_text(progress)
    total = progress.get("total")
    if total:
        text += f" ({100 * (progress.get('current') or 0) / total:.0f}%)"
    if progress.get("message"):
        text += f" {progress['message']}"
    return text


def _stamp(when: datetime | None) -> str:
    if when is None:
        return "-"
    return f"{when.isoformat(timespec='seconds')} ({relative(when)})"


def checks_table(checks: list[Check]) -> Table:
    """The `jobctl health` table."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("CHECK", "STATUS", "TIME", "DETAIL"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.name,
            Text("ok", style="green") if check.ok else Text("FAIL", style="red"),
            duration(check.seconds),
            Text(check.detail),
        )
    return table
