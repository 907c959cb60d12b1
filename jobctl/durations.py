"""Durations and points in time as users type them: `90s`, `15m`, `2h`, `7d`, `1h30m`, ISO-8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .errors import UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_SECONDS = 100 * 365 * 86_400  # beyond this, datetime arithmetic overflows sooner or later
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in `90`, `90s`, `15m`, `2h`, `7d`, `2w` or a sum such as `1h30m`; a usage error otherwise."""
    raw = text.strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw)
    elif raw and re.fullmatch(rf"(?:{_PART.pattern})+", raw):
        seconds = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(raw))
    if seconds is None:
        raise UsageError(f"invalid {what} {text!r}: use a number with s, m, h, d or w, e.g. 90s, 15m, 2h, 7d")
    if seconds > MAX_SECONDS:
        raise UsageError(f"invalid {what} {text!r}: at most 100 years")
    return seconds


def parse_time(text: str) -> datetime:
    """An ISO-8601 date or time (`2026-05-01`, `2026-05-01 09:00`, with `Z` or an offset) as UTC.

    A time without a zone is in the local zone of the machine, as a person reading a clock means it.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: use a duration such as 2h or an ISO-8601 time such as 2026-05-01T09:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive means local time
    return when.astimezone(UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now (`2h`, `7d`) or a point in time (ISO-8601), as UTC."""
    now = now or datetime.now(UTC)
    stripped = text.strip()
    if re.fullmatch(r"[\d.smhdw]+", stripped.lower()) and not re.fullmatch(r"\d{4}-.*", stripped):
        return now - timedelta(seconds=parse_duration(stripped))
    return parse_time(stripped)


def format_duration(seconds: float) -> str:
    """A duration as typed back: `45s`, `15m`, `2h`, `7d`, `1h30m`."""
    remaining = round(seconds)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
