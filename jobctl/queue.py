"""Redis and RQ: connections, enqueueing, live job state, cancel signals and workers' registry."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .config import get_settings, mask_url
from .errors import BackendError

if TYPE_CHECKING:
    from redis import Redis

    from .attempts import Attempt
    from .models import Job

DISPATCH = "jobctl.runtime.run_job"
CANCEL_KEY = "jobctl:cancel:{}"
ENQUEUE_BATCH = 1000

P = ParamSpec("P")
T = TypeVar("T")

_connections: dict[tuple[int, str], Redis] = {}


def redis_url() -> str:
    """The URL of the Redis jobctl uses, starting the embedded server when none is configured."""
    settings = get_settings()
    url = settings.resolved_redis_url()
    if url is not None:
        return url
    from .embedded import ensure_embedded_redis

    return ensure_embedded_redis(settings.data_dir)


def redis_error(url: str, exc: BaseException) -> BackendError:
    """A one-line error naming Redis (password masked) and why it failed."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.replace(url, mask_url(url))
    return BackendError(f"cannot reach Redis at {mask_url(url)} ({reason})")


def guarded(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn Redis connection failures into a BackendError."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from redis import exceptions as rexc

        try:
            return fn(*args, **kwargs)
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.AuthenticationError, rexc.ResponseError) as exc:
            auth_failure = "NOAUTH" in str(exc) or "WRONGPASS" in str(exc)
            if isinstance(exc, rexc.ResponseError) and not auth_failure:
                raise
            raise redis_error(redis_url(), exc) from None

    return wrapper


def get_redis() -> Redis:
    """This process's Redis client (its sockets are never shared across a fork)."""
    from redis import Redis

    url = redis_url()
    key = (os.getpid(), url)
    conn = _connections.get(key)
    if conn is None:
        inherited = [c for (pid, u), c in _connections.items() if u == url and pid != os.getpid()]
        if inherited:
            # redis-py's pool notices the fork and opens fresh sockets with the same settings.
            conn = inherited[0]
        else:
            try:
                conn = Redis.from_url(
                    url, socket_connect_timeout=5, health_check_interval=30, **_driver_info()
                )
            except ValueError as exc:
                raise BackendError(f"malformed Redis URL {mask_url(url)!r} ({exc})") from None
        _connections[key] = conn
    return conn


def _driver_info() -> dict[str, Any]:
    """No CLIENT SETINFO: two round trips less for every new connection (each work-horse opens one),
    and no package-metadata lookup."""
    try:
        from redis.driver_info import DriverInfo  # noqa: F401
    except ImportError:  # redis-py before 7.1
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


def reset_connections() -> None:
    """Forget every connection (tests and settings changes)."""
    for conn in _connections.values():
        conn.close()
    _connections.clear()


def serializer() -> Any:
    """RQ's JSON serializer: nothing jobctl enqueues or reads is pickled."""
    from rq.serializers import JSONSerializer

    return JSONSerializer


def rq_job_id(job_id: int, attempt: int) -> str:
    """The RQ job id of a row's attempt."""
    return f"jobctl-{job_id}-{attempt}"


def parse_rq_job_id(task_id: str) -> tuple[int, int] | None:
    """The (row id, attempt) an RQ job id names, or None for a job that is not jobctl's."""
    parts = task_id.split("-")
    if len(parts) != 3 or parts[0] != "jobctl" or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), int(parts[2])


def get_queue(name: str, connection: Redis | None = None) -> Any:
    """The RQ queue called `name`, with the JSON serializer."""
    from rq import Queue

    return Queue(name, connection=connection or get_redis(), serializer=serializer())


@guarded
def ping() -> None:
    """Check Redis answers."""
    get_redis().ping()


def rq_queue(job: Job) -> str:
    """The RQ queue a row's attempts go to: its queue at its priority."""
    from .priority import rq_queue_name

    return rq_queue_name(job.queue, job.priority)


def enqueue(jobs: Sequence[Job | Attempt]) -> None:
    """Put attempts on their queues, or in RQ's schedule when due later (see attempts.py); a Job stands
    for its row's next attempt."""
    from .attempts import Attempt
    from .attempts import enqueue as enqueue_attempts

    enqueue_attempts([job if isinstance(job, Attempt) else Attempt.next_of(job) for job in jobs])


@guarded
def discard(task_id: str) -> None:
    """Remove a queued RQ job so no worker starts it (the SQL claim refuses it anyway)."""
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob

    # ValueError: a worker took the job just before its row was cancelled and is ending it (its claim
    # failed); RQ's cancel read the execution record as the worker deleted it. That worker ends the job.
    with contextlib.suppress(NoSuchJobError, InvalidJobOperation, ValueError):
        RQJob.fetch(task_id, connection=get_redis(), serializer=serializer()).cancel()


@guarded
def request_stop(task_id: str, ttl: int = 3600) -> None:
    """Ask whichever process runs `task_id` to stop it."""
    get_redis().set(CANCEL_KEY.format(task_id), "1", ex=ttl)


def stop_requested(conn: Redis, task_id: str) -> bool:
    """True once a cancel has been requested for `task_id`."""
    return bool(conn.exists(CANCEL_KEY.format(task_id)))


@dataclass
class LiveState:
    """What Redis knows of a running or queued attempt."""

    rq_status: str | None
    progress: dict[str, Any] | None
    worker: str | None
    position: int | None = None


@guarded
def live_state(jobs: Sequence[Job]) -> dict[int, LiveState]:
    """Redis state of many rows in one pipelined round trip."""
    conn = get_redis()
    tracked = [j for j in jobs if j.task_id and j.id is not None]
    if not tracked:
        return {}
    with conn.pipeline(transaction=False) as pipe:
        for job in tracked:
            pipe.hmget(f"rq:job:{job.task_id}", "status", "meta", "worker_name")
            pipe.lpos(f"rq:queue:{rq_queue(job)}", job.task_id or "")
        replies = pipe.execute()
    out: dict[int, LiveState] = {}
    for job, fields, position in zip(tracked, replies[0::2], replies[1::2], strict=True):
        status, meta_raw, worker = fields
        meta: dict[str, Any] = {}
        if meta_raw:
            try:
                meta = json.loads(meta_raw)
            except ValueError:
                meta = {}
        assert job.id is not None
        out[job.id] = LiveState(
            rq_status=status.decode() if status else None,
            progress=meta.get("progress") if isinstance(meta, dict) else None,
            worker=worker.decode() if worker else None,
            position=position,
        )
    return out


@dataclass
class WorkerInfo:
    """One live RQ worker."""

    name: str
    hostname: str
    pid: int | None
    queues: list[str]
    state: str
    current_job: str | None


@guarded
def list_workers() -> list[WorkerInfo]:
    """The workers registered in Redis."""
    from rq import Worker

    workers = Worker.all(connection=get_redis(), serializer=serializer())
    return [
        WorkerInfo(
            name=w.name,
            hostname=w.hostname or "",
            pid=w.pid,
            queues=w.queue_names(),
            state=str(w.get_state()),
            current_job=w.get_current_job_id(),
        )
        for w in workers
    ]


def queue_names(names: Iterable[str]) -> list[str]:
    """Queue names as given, or the default queue."""
    return list(names) or [get_settings().default_queue]


# ---------------------------------------------------------------- what waits on a queue


@dataclass
class Waiting:
    """RQ job ids waiting on one queue: in its list, popped but not yet started, scheduled, deferred."""

    queued: set[str]
    popped: set[str]
    scheduled: set[str]
    deferred: set[str]


@guarded
def waiting(queue_name: str) -> Waiting:
    """Every RQ job id waiting on a queue, read without RQ's registry cleanup."""
    from rq.intermediate_queue import IntermediateQueue
    from rq.registry import DeferredJobRegistry, ScheduledJobRegistry

    conn = get_redis()
    q = get_queue(queue_name, conn)
    with conn.pipeline(transaction=False) as pipe:
        pipe.lrange(q.key, 0, -1)
        pipe.lrange(IntermediateQueue.get_intermediate_queue_key(q.key), 0, -1)
        pipe.zrange(ScheduledJobRegistry(queue=q).key, 0, -1)
        pipe.zrange(DeferredJobRegistry(queue=q).key, 0, -1)
        queued, popped, scheduled, deferred = pipe.execute()

    def ids(raw: list[bytes]) -> set[str]:
        return {item.decode().split(":", 1)[0] for item in raw}

    return Waiting(ids(queued), ids(popped), ids(scheduled), ids(deferred))


# ---------------------------------------------------------------- pruning


@guarded
def purge(task_ids_by_queue: dict[str, list[str]], extra_keys: Sequence[str] = ()) -> None:
    """Delete what Redis keeps of ended RQ jobs (hash, results, registry entries) and `extra_keys`,
    pipelined in batches; nothing is read first, so there is no registry cleanup either."""
    from rq.executions import ExecutionRegistry
    from rq.job import Job as RQJob
    from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
    from rq.results import get_key as results_key

    conn = get_redis()
    with conn.pipeline(transaction=False) as pipe:
        for queue_name, task_ids in task_ids_by_queue.items():
            q = get_queue(queue_name, conn)
            ended = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry)
            registries = [registry(queue=q).key for registry in ended]
            for start in range(0, len(task_ids), ENQUEUE_BATCH):
                batch = task_ids[start : start + ENQUEUE_BATCH]
                for registry in registries:
                    pipe.zrem(registry, *batch)
                for task_id in batch:
                    pipe.delete(
                        RQJob.key_for(task_id),
                        RQJob.dependents_key_for(task_id),
                        results_key(task_id),
                        ExecutionRegistry(task_id, conn).key,
                    )
                pipe.execute()
        for start in range(0, len(extra_keys), ENQUEUE_BATCH):
            pipe.delete(*extra_keys[start : start + ENQUEUE_BATCH])
            pipe.execute()


@guarded
def queue_depths(extra: Iterable[str] = ()) -> dict[str, int]:
    """How many jobs wait in each queue RQ knows of (and in `extra`), in two round trips."""
    from rq import Queue

    conn: Any = get_redis()  # replies are bytes: the client does not decode
    prefix = Queue.redis_queue_namespace_prefix
    names = {raw.decode().removeprefix(prefix) for raw in conn.smembers(Queue.redis_queues_keys)}
    names.update(extra)
    ordered = sorted(names)
    with conn.pipeline(transaction=False) as pipe:
        for name in ordered:
            pipe.llen(get_queue(name, conn).key)
        lengths = pipe.execute()
    return dict(zip(ordered, (int(n) for n in lengths), strict=True))
