"""Retry policy: the wait before each next attempt, which failures are retried, and each attempt's error."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .models import utcnow
from .timespec import parse_duration

if TYPE_CHECKING:
    from .models import Job

MAX_DELAY = 7 * 86_400.0
DEFAULT_CAP = 3600.0
MAX_ERROR_CHARS = 4000
DELAY_HINT = "use seconds (30), a list (10,30,60) or exponential backoff (exp, exp:BASE or exp:BASE:CAP)"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# What a hard timeout is called to `--retry-on`, besides RQ's own exception name.
TIMEOUT_NAMES = ("TimeoutError",)


def _seconds(text: str, spec: str) -> float:
    try:
        seconds = parse_duration(text, what="retry delay")
    except UsageError:
        raise UsageError(f"invalid --retry-delay {spec!r}: {DELAY_HINT}") from None
    if seconds > MAX_DELAY:
        raise UsageError(f"invalid --retry-delay {spec!r}: a delay may not exceed 7 days")
    return seconds


def parse_retry_delay(text: str | None) -> dict[str, Any] | None:
    """The delay spec stored on a job: fixed seconds, a list (the last repeats), or capped exponential."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    if not raw:
        raise UsageError(f"invalid --retry-delay {text!r}: {DELAY_HINT}")
    head, *rest = raw.split(":")
    if head in ("exp", "exponential"):
        if len(rest) > 2:
            raise UsageError(f"invalid --retry-delay {text!r}: {DELAY_HINT}")
        base = _seconds(rest[0], text) if rest and rest[0] else 1.0
        cap = _seconds(rest[1], text) if len(rest) > 1 and rest[1] else max(DEFAULT_CAP, base)
        if base <= 0 or cap < base:
            raise UsageError(f"invalid --retry-delay {text!r}: the base must be above 0, the cap at least it")
        return {"kind": "exponential", "base": base, "cap": cap, "jitter": True}
    if rest:
        raise UsageError(f"invalid --retry-delay {text!r}: {DELAY_HINT}")
    if "," in raw:
        return {"kind": "list", "seconds": [_seconds(part, text) for part in raw.split(",")]}
    return {"kind": "fixed", "seconds": _seconds(raw, text)}


def delay_for(spec: dict[str, Any] | None, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed `attempt` (1-based) before the next one."""
    if not spec:
        return 0.0
    kind = spec.get("kind")
    if kind == "fixed":
        return float(spec["seconds"])
    if kind == "list":
        seconds = spec["seconds"]
        return float(seconds[min(attempt, len(seconds)) - 1]) if seconds else 0.0
    if kind == "exponential":
        delay = min(float(spec["cap"]), float(spec["base"]) * 2.0 ** min(attempt - 1, 60))
        # "Equal jitter": retries of many jobs that failed together spread out, never beyond the cap.
        return delay * (0.5 + 0.5 * rand()) if spec.get("jitter", True) else delay
    return 0.0


def describe_delay(spec: dict[str, Any] | None) -> str:
    """The delay spec in words, for `jobctl show`."""
    if not spec:
        return "none (at once)"
    if spec.get("kind") == "fixed":
        return f"{spec['seconds']:g}s"
    if spec.get("kind") == "list":
        return ", ".join(f"{s:g}s" for s in spec["seconds"]) + " (the last repeats)"
    if spec.get("kind") == "exponential":
        jitter = ", with jitter" if spec.get("jitter", True) else ""
        return f"exponential from {spec['base']:g}s, capped at {spec['cap']:g}s{jitter}"
    return str(spec)


def parse_retry_on(items: Iterable[str] | None) -> list[str] | None:
    """Exception names from `--retry-on` (repeatable, comma-separated), or None for every failure."""
    names: list[str] = []
    for item in items or []:
        for part in str(item).split(","):
            name = part.strip()
            if not name:
                continue
            if not _NAME.match(name):
                raise UsageError(f"invalid --retry-on {name!r}: give exception class names, e.g. ValueError")
            if name not in names:
                names.append(name)
    return names or None


def exception_matches(exc: BaseException, names: Sequence[str]) -> bool:
    """True when `exc` is an instance of a class named in `names` (simple or dotted name)."""
    from rq.timeouts import JobTimeoutException

    wanted = set(names)
    if isinstance(exc, JobTimeoutException) and wanted & set(TIMEOUT_NAMES):
        return True
    for cls in type(exc).__mro__:
        if cls.__name__ in wanted or f"{cls.__module__}.{cls.__qualname__}" in wanted:
            return True
    return False


@dataclass
class RetryPlan:
    """A next attempt: due at once (`due` None) or at a time."""

    due: datetime | None


def plan_retry(
    job: Job, attempt: int, exc: BaseException | None = None, *, now: datetime | None = None
) -> RetryPlan | None:
    """Whether failed `attempt` gets another, and when; None when it does not.

    With `--retry-on`, only task exceptions of those types are retried: a failure without an
    exception (the worker was lost) ends the job.
    """
    if attempt > job.retries:
        return None
    if job.retry_on and (exc is None or not exception_matches(exc, job.retry_on)):
        return None
    delay = delay_for(job.retry_delay, attempt)
    if delay <= 0:
        return RetryPlan(None)
    return RetryPlan((now or utcnow()) + timedelta(seconds=delay))


def with_error(
    existing: list[dict[str, Any]] | None, attempt: int, error: str, at: datetime | None = None
) -> list[dict[str, Any]]:
    """`existing` attempt errors with `attempt`'s error recorded (replacing any earlier one for it)."""
    entries = [e for e in existing or [] if isinstance(e, dict) and e.get("attempt") != attempt]
    text = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "…"
    entries.append({"attempt": attempt, "error": text, "at": (at or utcnow()).isoformat()})
    return sorted(entries, key=lambda e: int(e.get("attempt") or 0))
