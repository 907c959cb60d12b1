"""RQ's job hashes and registries as reconciliation reads them (never with RQ's cleanup) and repairs them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .queue import get_queue, get_redis, guarded, parse_rq_job_id, serializer

ENDED = frozenset({"finished", "failed", "stopped", "canceled"})


@dataclass
class AttemptState:
    """What Redis holds for one RQ job: its status and the worker that last took it."""

    status: str | None
    worker: str | None


# Each RQ job hash's status and worker, read server-side: one command per batch, not one per job.
_STATES = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, 'status', 'worker_name')
end
return out
"""
STATES_BATCH = 5000  # keys per script call: Redis serves others between two


@guarded
def attempt_states(task_ids: Sequence[str]) -> dict[str, AttemptState]:
    """The RQ status and worker of many RQ jobs, in one pipelined round trip (no registry cleanup)."""
    if not task_ids:
        return {}
    with get_redis().pipeline(transaction=False) as pipe:
        for start in range(0, len(task_ids), STATES_BATCH):
            batch = task_ids[start : start + STATES_BATCH]
            pipe.eval(_STATES, len(batch), *(f"rq:job:{task_id}" for task_id in batch))
        replies = [reply for batch_replies in pipe.execute() for reply in batch_replies]
    return {
        task_id: AttemptState(
            status=status.decode() if status else None, worker=worker.decode() if worker else None
        )
        for task_id, (status, worker) in zip(task_ids, replies, strict=True)
    }


@guarded
def forget_popped(queue_name: str, task_id: str) -> None:
    """Drop an RQ job id that a worker popped but never started (it is about to be enqueued again)."""
    from rq.intermediate_queue import IntermediateQueue

    key = IntermediateQueue.get_intermediate_queue_key(get_queue(queue_name).key)
    get_redis().lrem(key, 0, task_id)


@guarded
def registered_workers(names: Iterable[str]) -> set[str]:
    """The names among `names` of RQ workers registered and not dead (RQ's own, slow, heartbeat)."""
    names = list(names)
    if not names:
        return set()
    with get_redis().pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(f"rq:worker:{name}", "birth", "death")
        replies = pipe.execute()
    return {name for name, (birth, death) in zip(names, replies, strict=True) if birth and not death}


@dataclass
class Outcome:
    """How an RQ job that ended came out: its status, return value or error text, last progress."""

    status: str
    result: Any = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    ended_at: datetime | None = None


@guarded
def ended_outcome(task_id: str) -> Outcome | None:
    """The outcome RQ recorded for a job that ended, or None when the job is not there or not ended."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RQJob
    from rq.results import Result

    try:
        rq_job = RQJob.fetch(task_id, connection=get_redis(), serializer=serializer())
    except NoSuchJobError:
        return None
    status = rq_job.get_status(refresh=False)
    if status is None or str(status.value) not in ENDED:
        return None
    progress = rq_job.meta.get("progress") if isinstance(rq_job.meta, dict) else None
    latest = rq_job.latest_result()
    ended_at = rq_job.ended_at
    if ended_at is not None and ended_at.tzinfo is None:
        ended_at = ended_at.replace(tzinfo=UTC)  # RQ writes UTC
    outcome = Outcome(
        str(status.value), progress=progress if isinstance(progress, dict) else None, ended_at=ended_at
    )
    if latest is not None and latest.type == Result.Type.SUCCESSFUL:
        outcome.result = latest.return_value
    elif latest is not None and latest.exc_string:
        outcome.error = latest.exc_string.strip()
    return outcome


@guarded
def started_attempts(*, popped: bool = False) -> dict[str, str]:
    """jobctl's RQ job ids that RQ lists as started, on any queue, with their queue (no registry cleanup);
    with `popped`, also those a worker took off a queue and has not started yet."""
    from rq.intermediate_queue import IntermediateQueue
    from rq.registry import StartedJobRegistry

    conn: Any = get_redis()  # replies are bytes: the client does not decode
    names = sorted(n.decode().removeprefix("rq:queue:") for n in conn.smembers("rq:queues"))
    listed = []
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(StartedJobRegistry(name, connection=conn).key, 0, -1)
            listed.append(name)
            if popped:
                pipe.lrange(IntermediateQueue.get_intermediate_queue_key(f"rq:queue:{name}"), 0, -1)
                listed.append(name)
        replies = pipe.execute()
    found: dict[str, str] = {}
    for name, members in zip(listed, replies, strict=True):
        for member in members:
            task_id = member.decode().split(":", 1)[0]  # started entries are "<job id>:<execution id>"
            if parse_rq_job_id(task_id) is not None:
                found[task_id] = name
    return found


@guarded
def close(task_id: str, reason: str, *, completed: bool = False, queue_name: str | None = None) -> None:
    """End an RQ job that no process runs any more, as finished or failed, so RQ and rq-dashboard agree
    with its row: one that started, or one a worker popped (and claimed the row for) but died before
    starting. Its entries in the started list, the popped list and the queue go."""
    from rq.exceptions import NoSuchJobError
    from rq.intermediate_queue import IntermediateQueue
    from rq.job import Job as RQJob
    from rq.job import JobStatus as RQStatus
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    conn = get_redis()
    try:
        rq_job: RQJob | None = RQJob.fetch(task_id, connection=conn, serializer=serializer())
    except NoSuchJobError:  # only list entries were left
        rq_job = None
    name = queue_name or (rq_job.origin if rq_job is not None else None)
    if name is None:
        return
    q = get_queue(name, conn)
    _drop_started(conn, StartedJobRegistry(queue=q).key, task_id)
    with conn.pipeline() as pipe:
        pipe.lrem(IntermediateQueue.get_intermediate_queue_key(q.key), 0, task_id)
        if rq_job is not None and rq_job.get_status(refresh=False) in (RQStatus.STARTED, RQStatus.QUEUED):
            pipe.lrem(q.key, 0, task_id)
            if completed:
                rq_job.set_status(RQStatus.FINISHED, pipeline=pipe)
                FinishedJobRegistry(queue=q).add(rq_job, ttl=rq_job.result_ttl or 500, pipeline=pipe)
            else:
                rq_job.set_status(RQStatus.FAILED, pipeline=pipe)
                failed = FailedJobRegistry(queue=q)
                failed.add(rq_job, ttl=rq_job.failure_ttl, exc_string=reason, pipeline=pipe)
        pipe.execute()


def _drop_started(conn: Any, key: str, task_id: str) -> None:
    # Entries are "<job id>:<execution id>"; the execution records may have expired already.
    stale = [m for m in conn.zrange(key, 0, -1) if m.decode().split(":", 1)[0] == task_id]
    if stale:
        conn.zrem(key, *stale)
