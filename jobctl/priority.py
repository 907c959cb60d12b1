"""Priorities: each jobctl queue is three RQ queues (`Q-high`, `Q`, `Q-low`) that workers serve in order."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UsageError

PRIORITIES = ("high", "normal", "low")
NORMAL = "normal"


def check_priority(text: str | None) -> str:
    """A priority as typed (`high`, `normal`, `low`; any case), or a usage error."""
    value = (text or NORMAL).strip().lower()
    if value not in PRIORITIES:
        raise UsageError(f"invalid priority {text!r} (choose from {', '.join(PRIORITIES)})")
    return value


def rq_queue_name(queue: str, priority: str | None) -> str:
    """The RQ queue holding a job of `queue` at `priority` (normal keeps the plain name)."""
    if not priority or priority == NORMAL:
        return queue
    return f"{queue}-{priority}"


def worker_queues(names: Sequence[str]) -> list[str]:
    """The RQ queues a worker of `names` listens on, highest priority first: every queue's high
    jobs, then normal, then low, keeping the given order of queues within each level."""
    return [rq_queue_name(name, level) for level in PRIORITIES for name in names]
