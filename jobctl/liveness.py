"""Heartbeats that say a running attempt or a worker is alive, and how the reconciler reads them.

Two short-lived Redis keys, each refreshed well inside its TTL (`JOBCTL_LOST_AFTER`):

- `jobctl:alive:job:<rq id>`, written by the process that runs the attempt (`runtime.run_job`), so it
  also covers plain `rq worker -S json` and work-horses whose parent worker died;
- `jobctl:alive:worker:<name>`, written by a thread of each `jobctl worker` with the job it is running,
  which keeps a horse that holds the GIL for a long time from looking dead.

A key that expired means its process stopped beating. Each record also names its host (boot id and PID
namespace), PID and process start time, so a reconciler on the same host can see at once that the
process is gone instead of waiting for the TTL.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any

JOB_KEY = "jobctl:alive:job:{}"
WORKER_KEY = "jobctl:alive:worker:{}"
EPOCH_KEY = "jobctl:epoch"


def beat_interval(lost_after: float) -> float:
    """How often heartbeats are refreshed: several times within their TTL."""
    return max(0.2, min(5.0, lost_after / 4))


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


@functools.cache
def host_identity() -> str | None:
    """This kernel boot and PID namespace: processes with the same identity can see each other's PIDs."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{pidns}" if boot else None


def _stat(pid: int) -> list[str]:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split() if stat else []


def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (tells a PID apart from a reused one)."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _record(**extra: Any) -> str:
    pid = os.getpid()
    return json.dumps({"host": host_identity(), "pid": pid, "start": process_start(pid), **extra})


def _ttl_ms(lost_after: float) -> int:
    return max(1000, int(lost_after * 1000))


def beat_job(conn: Any, rq_id: str, lost_after: float) -> None:
    """Say that this process is running the attempt `rq_id`."""
    conn.set(JOB_KEY.format(rq_id), _record(), px=_ttl_ms(lost_after))


def end_job(conn: Any, rq_id: str) -> None:
    """Withdraw the attempt's heartbeat (it has been recorded)."""
    conn.delete(JOB_KEY.format(rq_id))


def beat_worker(conn: Any, name: str, job: str | None, lost_after: float) -> None:
    """Say that the worker `name` is alive and running `job` (or nothing)."""
    conn.set(WORKER_KEY.format(name), _record(job=job), px=_ttl_ms(lost_after))


def end_worker(conn: Any, name: str) -> None:
    """Withdraw a worker's heartbeat when it stops."""
    conn.delete(WORKER_KEY.format(name))


@dataclass(frozen=True)
class Beat:
    """One heartbeat record as read back."""

    host: str | None
    pid: int | None
    start: str | None
    job: str | None = None

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Beat | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        return cls(
            host=data.get("host"),
            pid=pid if isinstance(pid, int) else None,
            start=data.get("start"),
            job=data.get("job"),
        )

    def process_gone(self) -> bool:
        """True only when the process is on this host and certainly no longer exists."""
        if self.pid is None or self.host is None or self.host != host_identity():
            return False
        fields = _stat(self.pid)
        if len(fields) > 19:
            # a zombie has finished; a different start time means the PID was reused
            return fields[0] in ("Z", "X") or (self.start is not None and fields[19] != self.start)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False  # it exists but /proc cannot tell more: assume alive

    @property
    def alive(self) -> bool:
        """The key exists and, when the process is local, the process does too."""
        return not self.process_gone()


def read_beats(conn: Any, rq_ids: list[str], workers: list[str]) -> tuple[dict[str, Beat], dict[str, Beat]]:
    """The job and worker heartbeats that still exist, in one round trip."""
    if not rq_ids and not workers:
        return {}, {}
    keys = [JOB_KEY.format(i) for i in rq_ids] + [WORKER_KEY.format(w) for w in workers]
    values = conn.mget(keys)
    jobs = {i: b for i, v in zip(rq_ids, values[: len(rq_ids)], strict=True) if (b := Beat.parse(v))}
    found = {w: b for w, v in zip(workers, values[len(rq_ids) :], strict=True) if (b := Beat.parse(v))}
    return jobs, found


def redis_age(conn: Any) -> float:
    """How long this Redis has held jobctl's state: since it started, or since its data was flushed.

    Absent heartbeats prove nothing until they have had `JOBCTL_LOST_AFTER` to be written again.
    """
    seconds, micros = conn.time()
    now = seconds + micros / 1e6
    conn.set(EPOCH_KEY, repr(now), nx=True)
    epoch = float(conn.get(EPOCH_KEY) or now)
    uptime = float(conn.info("server").get("uptime_in_seconds", 0))
    return min(uptime, now - epoch)
