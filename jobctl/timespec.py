"""Times and durations as people type them: `90`, `10m`, `1h30m`, `2026-12-01T09:00`, `tomorrow 09:00`.

Times without a zone are in the user's local zone (`TZ`, else the system's); everything returned is UTC.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import UsageError

_UNITS = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_OFFSET = re.compile(r"^[+-]\d{2}:?\d{2}$")
DURATION_HINT = "use seconds or a duration such as 30s, 5m, 2h, 1d, 1h30m"
TIME_HINT = "use ISO-8601 (2026-12-01T09:00, with an optional zone), HH:MM, or 'tomorrow 09:00'"


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in `90`, `1.5`, `30s`, `5m`, `2h`, `1d` or combinations such as `1h30m`."""
    raw = str(text).strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
        compact = raw.replace(" ", "")
        matches = list(_DURATION.finditer(compact))
        if matches and "".join(m.group(0) for m in matches) == compact:
            units = [m.group(2) for m in matches]
            if len(set(units)) == len(units):
                seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)
    if not 0 <= seconds < 10 * 365 * 86_400 or seconds != seconds:
        raise UsageError(f"invalid {what} {text!r}: {DURATION_HINT}")
    return seconds


def parse_seconds(text: str | int | None, *, what: str, low: int = 1, high: int = 7 * 86_400) -> int | None:
    """A whole number of seconds from a duration, within [low, high]; None stays None."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}: {DURATION_HINT}")
    seconds = float(text) if isinstance(text, int | float) else parse_duration(text, what=what)
    if not low <= seconds <= high:
        raise UsageError(f"{what} must be between {low} second(s) and {high // 86_400} days, got {text}")
    return round(seconds)


def local_zone() -> tzinfo:
    """The user's zone: `TZ` when it names one, else the system's."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    system = system_zone_name()
    if system:
        try:
            return ZoneInfo(system)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return datetime.now().astimezone().tzinfo or UTC


def system_zone_name() -> str | None:
    """The IANA name of the local zone (`TZ`, else /etc/localtime), or None when it cannot be told."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        return name
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return None
    marker = "zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else None


def zone(name: str) -> tzinfo:
    """A zone by name: `UTC`, `Z`, `+02:00`, or an IANA name such as `Europe/Berlin`."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    if _OFFSET.match(name):
        sign = -1 if name[0] == "-" else 1
        digits = name[1:].replace(":", "")
        return _fixed(sign * (int(digits[:2]) * 60 + int(digits[2:])))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r}") from None


def _fixed(minutes: int) -> tzinfo:
    from datetime import timezone

    return timezone(timedelta(minutes=minutes))


def parse_when(text: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> datetime:
    """The UTC instant `text` names; a bare clock time that has passed today means tomorrow."""
    now = now or datetime.now(UTC)
    raw = " ".join(str(text).split())
    if not raw:
        raise UsageError(f"invalid time {text!r}: {TIME_HINT}")
    words = raw.split(" ")
    when_zone = tz or local_zone()
    if len(words) > 1 and not _CLOCK.match(words[-1]) and not words[-1][0].isdigit():
        when_zone = zone(words[-1])
        words = words[:-1]
    phrase = " ".join(words)
    lowered = phrase.lower()
    if lowered == "now":
        return now
    if lowered.startswith(("in ", "+")):
        return now + timedelta(seconds=parse_duration(lowered.removeprefix("in ").lstrip("+"), what="time"))
    local_now = now.astimezone(when_zone)
    day_words = {"today": local_now.date(), "tomorrow": local_now.date() + timedelta(days=1)}
    if words[0].lower() in day_words:
        if len(words) != 2:
            raise UsageError(f"invalid time {text!r}: give a clock time, as in '{words[0].lower()} 09:00'")
        return _at(day_words[words[0].lower()], _clock(words[1], text), when_zone)
    if _CLOCK.match(phrase):
        clock = _clock(phrase, text)
        when = _at(local_now.date(), clock, when_zone)
        return when if when > now else _at(local_now.date() + timedelta(days=1), clock, when_zone)
    try:
        parsed = datetime.fromisoformat(phrase.replace(" ", "T", 1) if len(words) == 2 else phrase)
    except ValueError:
        raise UsageError(f"invalid time {text!r}: {TIME_HINT}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=when_zone)
    return parsed.astimezone(UTC)


def _clock(word: str, text: str) -> time:
    match = _CLOCK.match(word)
    if not match:
        raise UsageError(f"invalid time {text!r}: {TIME_HINT}")
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise UsageError(f"invalid time {text!r}: {word} is not a time of day")
    return time(hour, minute, second)


def _at(day: date, clock: time, when_zone: tzinfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=when_zone).astimezone(UTC)


def due_time(
    at: str | None, delay: str | None, *, now: datetime | None = None, tolerance: float = 1.0
) -> datetime | None:
    """The UTC due time from `--at TIME` or `--in DURATION` (not both); a past `--at` is refused."""
    if at is not None and delay is not None:
        raise UsageError("give either --at or --in, not both")
    now = now or datetime.now(UTC)
    if delay is not None:
        return now + timedelta(seconds=parse_duration(delay, what="--in duration"))
    if at is None:
        return None
    when = parse_when(at, now=now)
    if when < now - timedelta(seconds=tolerance):
        raise UsageError(f"--at {at!r} is in the past ({when.isoformat(timespec='seconds')})")
    return when
