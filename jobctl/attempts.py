"""Putting attempts of rows on their RQ queues, thousands at a time.

RQ builds a `Job` object per enqueued job, and redis-py packs an HSET of 38 arguments for each:
together about 100 µs of pure Python a job, more than everything else `submit --from` does. Here
RQ renders one job hash per batch; a Lua script (RQ uses them too) writes each attempt's hash as
that template plus the fields that differ between jobctl's jobs (call data, description, timeout,
meta) and pushes its id on the queue: one command per batch. The hashes are what
`Queue.enqueue_many` writes, field for field (tests/test_bulk.py compares them with RQ's own).
Attempts due later go through RQ's own `schedule_job`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .config import Settings, get_settings
from .priority import rq_queue_name
from .queue import DISPATCH, ENQUEUE_BATCH, get_queue, get_redis, guarded, rq_job_id

if TYPE_CHECKING:
    from redis.client import Pipeline

    from .models import Job


@dataclass(slots=True)
class Attempt:
    """One attempt of a row, with what its RQ job needs (cheaper to build than a Job model)."""

    job_id: int
    number: int
    name: str
    task: str
    queue: str
    priority: str
    timeout: int | None = None
    at_front: bool = False
    due: datetime | None = None

    @classmethod
    def next_of(cls, job: Job) -> Attempt:
        """The row's next attempt (attempts so far + 1)."""
        assert job.id is not None
        return cls(
            job.id,
            job.attempts + 1,
            job.name,
            job.task,
            job.queue,
            job.priority,
            job.timeout,
            bool(job.at_front),
            job.scheduled_for,
        )

    @classmethod
    def first_of(cls, row: Mapping[str, Any]) -> Attempt:
        """The first attempt of a row just inserted, from its stored values."""
        return cls(
            row["id"],
            1,
            row["name"],
            row["task"],
            row["queue"],
            row.get("priority") or "normal",
            row.get("timeout"),
            bool(row.get("at_front")),
            row.get("scheduled_for"),
        )

    @property
    def rq_id(self) -> str:
        return rq_job_id(self.job_id, self.number)

    @property
    def rq_queue(self) -> str:
        return rq_queue_name(self.queue, self.priority)


@guarded
def enqueue(attempts: Sequence[Attempt]) -> None:
    """Put attempts on their queues (by priority; `at_front` first in line), or in RQ's schedule when
    they are due later (the worker's scheduler moves them when due); one MULTI/EXEC per batch."""
    settings = get_settings()
    conn = get_redis()
    now = datetime.now(UTC)
    by_queue: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_queue.setdefault(attempt.rq_queue, []).append(attempt)
    for queue_name, queued in by_queue.items():
        queue = get_queue(queue_name, conn)
        for start in range(0, len(queued), ENQUEUE_BATCH):
            batch = queued[start : start + ENQUEUE_BATCH]
            ready = [a for a in batch if a.due is None or a.due <= now]
            later = [a for a in batch if a.due is not None and a.due > now]
            with conn.pipeline() as pipe:
                if ready:
                    _push(queue, ready, pipe, settings)
                for attempt in later:
                    _schedule(queue, attempt, pipe, settings)
                pipe.execute()


def _fields(attempt: Attempt, settings: Settings) -> dict[str, Any]:
    """`Queue.create_job` arguments for an attempt."""
    return {
        "args": [attempt.job_id, attempt.number],
        "timeout": attempt.timeout or settings.job_timeout,
        "result_ttl": settings.result_ttl,
        "failure_ttl": max(settings.result_ttl, 86_400),
        "description": attempt.name,
        "job_id": attempt.rq_id,
        "meta": {"jobctl_id": attempt.job_id, "task": attempt.task},
    }


# Writes a batch of RQ job hashes and queues their ids, server-side: the fields every job shares are
# sent once, then seven arguments per job, instead of an HSET of 38 arguments per job (whose packing
# and replies cost redis-py more than everything else here). Atomic, like the MULTI/EXEC around it.
# ARGV: n, the n shared field/value pairs, then per job: key, id, data, description, timeout, meta,
# at_front (1/0). One RPUSH (and one LPUSH) per batch: unpack() takes up to ~8,000 ids, the batch 1,000.
_PUSH = """
local n = tonumber(ARGV[1])
local fields = {}
for i = 2, 2 * n + 1 do fields[#fields + 1] = ARGV[i] end
local m = #fields
fields[m + 1], fields[m + 3], fields[m + 5], fields[m + 7] = 'data', 'description', 'timeout', 'meta'
local back, front = {}, {}
local i = 2 * n + 2
while i <= #ARGV do
  fields[m + 2], fields[m + 4] = ARGV[i + 2], ARGV[i + 3]
  fields[m + 6], fields[m + 8] = ARGV[i + 4], ARGV[i + 5]
  redis.call('HSET', ARGV[i], unpack(fields))
  if ARGV[i + 6] == '1' then front[#front + 1] = ARGV[i + 1] else back[#back + 1] = ARGV[i + 1] end
  i = i + 7
end
if #back > 0 then redis.call('RPUSH', KEYS[1], unpack(back)) end
if #front > 0 then redis.call('LPUSH', KEYS[1], unpack(front)) end
redis.call('SADD', KEYS[2], KEYS[1])
"""
_OWN = ("data", "description", "timeout", "meta")


def _push(queue: Any, attempts: Sequence[Attempt], pipe: Pipeline, settings: Settings) -> None:
    """Queue the RQ jobs of `attempts` as `Queue.enqueue_many` would: each job's hash, then its id
    pushed on the queue (LPUSH for those that go first)."""
    from rq.job import Job as RQJob
    from rq.job import JobStatus as RQStatus
    from rq.utils import now

    prototype = queue.create_job(DISPATCH, status=RQStatus.QUEUED, **_fields(attempts[0], settings))
    prototype.origin = queue.name  # what Queue._prepare_for_queue sets before saving
    prototype.enqueued_at = now()
    shared = {name: value for name, value in prototype.to_dict().items() if name not in _OWN}
    args: list[Any] = [len(shared), *(item for pair in shared.items() for item in pair)]
    dumps = queue.serializer.dumps
    for attempt in attempts:
        rq_id = attempt.rq_id
        prototype.args = [attempt.job_id, attempt.number]  # RQ serializes its call tuple (`data`)
        args += (
            RQJob.key_for(rq_id),
            rq_id,
            zlib.compress(prototype.data),
            attempt.name,
            attempt.timeout or settings.job_timeout,
            dumps({"jobctl_id": attempt.job_id, "task": attempt.task}),
            1 if attempt.at_front else 0,
        )
    # EVAL, not EVALSHA: Redis caches the compiled script by its digest all the same, and a pipeline
    # holding a Script object would ask SCRIPT EXISTS first, one more round trip per batch.
    pipe.eval(_PUSH, 2, queue.key, queue.redis_queues_keys, *args)


def _schedule(queue: Any, attempt: Attempt, pipe: Pipeline, settings: Settings) -> None:
    """Put an attempt in RQ's schedule for its due time."""
    from rq.job import JobStatus as RQStatus

    rq_job = queue.create_job(DISPATCH, status=RQStatus.SCHEDULED, **_fields(attempt, settings))
    rq_job.enqueue_at_front = attempt.at_front
    # RQ's schedule keeps whole seconds, rounding down: round up so it never starts early.
    due = attempt.due
    assert due is not None
    if due.microsecond:
        due = due.replace(microsecond=0) + timedelta(seconds=1)
    queue.schedule_job(rq_job, due, pipeline=pipe)
