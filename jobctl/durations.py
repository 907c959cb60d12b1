"""Spans back from now, as `--since` and `--older-than` take them (built on timespec's parsing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .errors import UsageError
from .timespec import parse_duration, parse_when

__all__ = ["format_duration", "parse_duration", "parse_since"]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now (`2h`, `7d`), else a time as `submit --at` takes it, as UTC."""
    now = now or datetime.now(UTC)
    try:
        seconds = parse_duration(text, what="--since")
    except UsageError:
        return parse_when(text, now=now)
    return now - timedelta(seconds=seconds)


def format_duration(seconds: float) -> str:
    """A duration as a person would type it: `45s`, `15m`, `2h`, `7d`, `1h30m`."""
    remaining = round(seconds)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
