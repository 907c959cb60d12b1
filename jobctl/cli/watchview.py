"""What `jobctl watch` and `list --watch` draw in a terminal: job lines with bars, the summary line."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.text import Text

from ..watching import Counts, display_order, percent
from .render import duration, jobs_table, one_line
from .watch import status_words

if TYPE_CHECKING:
    from ..service import JobView
    from ..watching import WatchedJob, Watcher

NAME_WIDTH = 24


def summary_line(c: Counts, hidden: str = "") -> Text:
    """The summary line, coloured, with a note of rows not shown."""
    text = Text.assemble(
        (f"running {c.running}", "cyan"),
        " · ",
        (f"pending {c.pending}", "yellow"),
        " · ",
        (f"done {c.completed}", "green"),
        " · ",
        (f"failed {c.failed}", "red"),
        " · ",
        (f"cancelled {c.cancelled}", "magenta"),
        no_wrap=True,
        overflow="ellipsis",
    )
    if hidden:
        text.append(f"   {hidden}", "dim")
    if c.active:
        text.append("   Ctrl-C stops watching, not the jobs", "dim")
    return text


BAR_STYLES = {"completed": "bar.finished", "failed": "red", "cancelled": "magenta"}


def bar_text(row: WatchedJob, width: int, clock: float) -> Text:
    """The bar: filled to the percentage, a moving pulse while there is no total, empty while pending."""
    pct = percent(row.progress)
    if row.status == "completed":
        pct = 100.0
    text = Text(no_wrap=True)
    if row.status == "processing" and pct is None:
        # Indeterminate: a short bright segment sweeping across, moved by the clock at each redraw.
        start = int(clock * 12) % (width + 4) - 4
        for x in range(width):
            text.append("━", style="bar.pulse" if start <= x < start + 4 else "bar.back")
        return text
    style = BAR_STYLES.get(row.status, "bar.complete")
    filled = width * (pct or 0) / 100
    full = int(filled)
    text.append("━" * full, style=style)
    if full < width and filled - full >= 0.5:
        text.append("╸", style=style)
        full += 1
    text.append("━" * (width - full), style="bar.back")
    return text


def info_text(row: WatchedJob) -> Text:
    """The message while running; the status with its details (queue place, outcome, error) otherwise."""
    status = row.status
    if status == "processing":
        message = (row.progress or {}).get("message") or ""
        return Text(one_line(str(message))) if message else Text("processing", style="cyan")
    if status == "completed":
        return Text("✓ completed", style="green")
    if status == "failed":
        error = row.error_line()
        return Text("✗ failed" + (f": {one_line(error)}" if error else ""), style="red")
    styles = {"pending": "yellow", "cancelled": "magenta"}
    return Text(one_line(status_words(row)), style=styles.get(status, ""))


COLUMNS = ("ID", "NAME", "PROGRESS", "STEPS", "%", "ELAPSED", "ETA", "MESSAGE")
RIGHT = {"ID", "STEPS", "%", "ELAPSED", "ETA"}


def watch_lines(rows: Sequence[WatchedJob], width: int) -> list[Text]:
    """A header and one line per job: id, name, bar, current/total, percent, elapsed, ETA, message or outcome.

    Laid out here rather than by a rich Table: with a screenful of rows redrawn twice a second,
    the table's layout was most of the cost of a refresh.
    """
    bar_width = 20 if width >= 110 else 10
    now = datetime.now(UTC)
    clock = time.monotonic()
    cells: list[list[Text]] = []
    for row in rows:
        progress = row.progress
        pct = percent(progress)
        steps = ""
        if progress:
            current, total = progress.get("current"), progress.get("total")
            steps = f"{current}/{total}" if total is not None else f"{current}"
        eta = row.eta(now)
        name = Text(one_line(row.job.name))
        name.truncate(NAME_WIDTH, overflow="ellipsis")
        cells.append(
            [
                Text(str(row.id)),
                name,
                bar_text(row, bar_width, clock),
                Text(steps),
                Text(f"{pct:.0f}%" if pct is not None else ""),
                Text(duration(row.elapsed(now)) if row.job.started_at else "-"),
                Text("" if row.terminal else duration(eta) if eta is not None else "-"),
                info_text(row),
            ]
        )
    widths = [max([len(title), *(c[i].cell_len for c in cells)]) for i, title in enumerate(COLUMNS)]
    lines = []
    for values in [[Text(title, style="bold") for title in COLUMNS], *cells]:
        line = Text(no_wrap=True, overflow="ellipsis")
        for index, (title, cell) in enumerate(zip(COLUMNS, values, strict=True)):
            if index:
                line.append("  ")
            if title == "MESSAGE":
                line.append_text(cell)
                break
            pad = " " * max(0, widths[index] - cell.cell_len)
            if title in RIGHT:
                line.append(pad)
            line.append_text(cell)
            if title not in RIGHT:
                line.append(pad)
        line.rstrip()
        lines.append(line)
    return lines


def watch_view(watcher: Watcher, width: int, height: int) -> RenderableType:
    """The whole screen: as many rows as fit (the active ones first when they do not), then the summary."""
    rows = list(watcher.rows.values())
    room = max(3, height - 3)  # header, summary, and a line for the cursor
    hidden = ""
    if len(rows) > room:
        ordered = display_order(rows)
        shown = ordered[: room - 1]
        left = Counts()
        for row in ordered[room - 1 :]:
            left.add(row.status)
        parts = [
            f"{n} {label}"
            for n, label in (
                (left.running, "running"),
                (left.pending, "pending"),
                (left.completed, "done"),
                (left.failed, "failed"),
                (left.cancelled, "cancelled"),
            )
            if n
        ]
        hidden = f"+{len(rows) - len(shown)} not shown ({', '.join(parts)})"
    else:
        shown = rows
    return Group(*watch_lines(shown, width), summary_line(watcher.counts(), hidden))


def list_view(
    views: list[JobView], highlighted: Collection[int], interval: float, height: int
) -> RenderableType:
    """The `list` table as much as fits, rows in `highlighted` in reverse video, and a note under it."""
    room = max(1, height - 3)
    table = jobs_table(views[:room])
    for index, view in enumerate(views[:room]):
        if view.job.id in highlighted:
            table.row_styles[index] = "reverse"
    note = f"{len(views)} jobs" + (f", {len(views) - room} not shown" if len(views) > room else "")
    note += f" · every {interval:g}s · Ctrl-C to stop"
    return Group(table, Text(note, style="dim"))
