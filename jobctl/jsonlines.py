"""The JSON Lines of `submit --from`: one job request per line, every line checked before anything is
stored. Lines that set none of the job-control options share the command's, checked once."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from . import options
from .errors import UsageError
from .service import JobRequest, validate_request


def parse_job_lines(lines: Iterable[str], defaults: JobRequest) -> list[JobRequest]:
    """JSON Lines for `submit --from`: each line a job, any field of `defaults` overridable."""
    requests: list[JobRequest] = []
    control_keys = {"timeout", "retries", *options.LINE_FIELDS}
    allowed = {"name", "task", "args", "description", "queue", *control_keys}
    shared: dict[str, Any] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"line {number}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"line {number}: expected a JSON object")
        unknown = set(data) - allowed
        if unknown:
            raise UsageError(f"line {number}: unknown field {sorted(unknown)[0]!r}")
        if "name" not in data:
            raise UsageError(f'line {number}: missing "name"')
        for key, kind in (("name", str), ("task", str), ("description", str), ("queue", str)):
            if key in data and not isinstance(data[key], kind):
                raise UsageError(f"line {number}: {key!r} must be a string")
        if "retries" in data and (isinstance(data["retries"], bool) or not isinstance(data["retries"], int)):
            raise UsageError(f"line {number}: 'retries' must be an integer")
        if "args" in data and not isinstance(data["args"], dict):
            raise UsageError(f'line {number}: "args" must be a JSON object')
        own = {
            "name": data["name"],
            "task": data.get("task", defaults.task),
            "args": data.get("args", dict(defaults.args)),
            "description": data.get("description", defaults.description),
            "queue": data.get("queue", defaults.queue),
        }
        if control_keys.isdisjoint(data):
            # The command's own options: checked once (one --after lookup, one --in due time), shared.
            if shared is None:
                shared = _checked_options(defaults, number)
            req = JobRequest(**shared, **own)
        else:
            req = JobRequest(
                **own,
                timeout=data.get("timeout", defaults.timeout),
                retries=data.get("retries", defaults.retries),
                **options.from_line(data, defaults, number),
            )
        try:
            validate_request(req)
        except UsageError as exc:
            raise UsageError(f"line {number}: {exc}") from None
        requests.append(req)
    if not requests:
        raise UsageError("no jobs to submit: the input is empty")
    return requests


def _checked_options(defaults: JobRequest, number: int) -> dict[str, Any]:
    """The command's job-control options checked once, as JobRequest fields, for every line that
    sets none of its own."""
    template = dataclasses.replace(defaults, control={}, checked=False)
    try:
        options.check(template)
    except UsageError as exc:
        raise UsageError(f"line {number}: {exc}") from None
    per_line = {"name", "task", "args", "description", "queue", "checked"}
    fields = dataclasses.fields(JobRequest)
    return {f.name: getattr(template, f.name) for f in fields if f.name not in per_line}
