"""Small terminal charts for `jobctl stats` and the table `jobctl prune` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..durations import format_duration
from .render import STATUS_STYLE, duration, one_line, relative, status_text

if TYPE_CHECKING:
    from ..ops import PrunePlan
    from ..stats import Stats

SPARKS = "▂▃▄▅▆▇█"
BLOCKS = " ▏▎▍▌▋▊▉█"
BAR_WIDTH = 30
PRUNE_SHOWN = 20


def sparkline(values: list[int]) -> str:
    """One character per value: `▁` for none, then seven heights up to the largest value."""
    top = max(values, default=0)
    if top <= 0:
        return "▁" * len(values)
    return "".join(
        "▁" if v <= 0 else SPARKS[min(len(SPARKS) - 1, (v * len(SPARKS) - 1) // top)] for v in values
    )


def bar(value: int, top: int, width: int = BAR_WIDTH) -> str:
    """A horizontal bar `value/top` of `width` cells, in eighths of a cell."""
    if top <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value * width * 8 / top))
    full, part = divmod(eighths, 8)
    return "█" * full + (BLOCKS[part] if part else "")


def _per_hour(total: int, seconds: float) -> str:
    rate = total * 3600 / max(seconds, 1)
    if rate >= 600:
        return f"{rate / 60:.0f}/min"
    return f"{rate:.2g}/h" if rate < 10 else f"{rate:.0f}/h"


def stats_view(stats: Stats) -> Group:
    """Counts with bars, throughput sparklines, queues, workers and duration percentiles."""
    window = stats.label
    parts: list[Text | Table] = []

    parts.append(Text(f"Jobs created ({window})", style="bold"))
    counts = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 2))
    top = max(stats.counts.values(), default=0)
    for status, n in stats.counts.items():
        counts.add_row(
            status_text(status), Text(str(n), justify="right"), Text(bar(n, top), STATUS_STYLE[status])
        )
    parts.append(counts)

    tp = stats.throughput
    seconds = (stats.now - stats.since).total_seconds()
    every = format_duration(tp.bucket_seconds)
    parts.append(Text(f"\nJobs ended per {every} ({window}, oldest first)", style="bold"))
    flows = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 2))
    for status, values in (("completed", tp.completed), ("failed", tp.failed), ("cancelled", tp.cancelled)):
        total = sum(values)
        flows.add_row(
            status_text(status),
            Text(sparkline(values), STATUS_STYLE[status]),
            Text(str(total), justify="right"),
            Text(_per_hour(total, seconds)),
        )
    parts.append(flows)

    parts.append(Text("\nQueues", style="bold"))
    if stats.queues:
        queues = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 2, 0, 2))
        for column in ("QUEUE", "QUEUED", "PENDING", "PROCESSING"):
            queues.add_column(column, justify="left" if column == "QUEUE" else "right")
        for q in stats.queues:
            queued = "?" if q.queued is None else str(q.queued)
            queues.add_row(Text(q.name), queued, str(q.pending), str(q.processing))
        parts.append(queues)
    else:
        parts.append(Text("  no queues yet"))

    if stats.workers is None:
        parts.append(Text("\nWorkers: unknown (Redis not reached)", style="bold"))
    else:
        w = stats.workers
        parts.append(Text(f"\nWorkers: {w['total']} live ({w['busy']} busy, {w['idle']} idle)", style="bold"))

    parts.append(Text(f"\nRun time of completed jobs ({window})", style="bold"))
    if stats.durations:
        runs = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 2, 0, 2))
        for column in ("TASK", "JOBS", "P50", "P95", "MAX"):
            runs.add_column(column, justify="left" if column == "TASK" else "right")
        for d in stats.durations:
            runs.add_row(Text(d.task), str(d.count), duration(d.p50), duration(d.p95), duration(d.max))
        parts.append(runs)
    else:
        parts.append(Text("  no completed jobs in the window"))
    return Group(*parts)


def prune_table(plan: PrunePlan) -> Table:
    """The first jobs a prune deletes (and how many more)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "TASK", "STATUS", "ENDED"):
        table.add_column(column, justify="right" if column == "ID" else "left", no_wrap=True, max_width=40)
    for job in plan.sample[:PRUNE_SHOWN]:
        table.add_row(
            Text(str(job.id)),
            Text(one_line(job.name)),
            Text(job.task),
            status_text(job.status),
            Text(relative(job.completed_at or job.updated_at)),
        )
    more = plan.total - min(len(plan.sample), PRUNE_SHOWN)
    if more > 0:
        table.add_row("", Text(f"… and {more} more"), "", "", "")
    return table
