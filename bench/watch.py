"""What one `jobctl watch` refresh costs with 500 active jobs: Redis round trips, SQL queries, CPU time.

    python -m bench.watch [--jobs 500] [--runs 3] [--refreshes 20] [--backend sqlite|postgres]

Runs a private redis-server (so INFO commandstats counts only this benchmark's commands), real
`jobctl worker` processes running `process` jobs (the rest wait in the queue), and the watcher
in this process. Round trips are counted on the socket (every request redis-py writes; a pipeline
is one) and SQL statements through SQLAlchemy's cursor events. The same jobs are then polled
the naive way, one `show` per job, for a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import database, stop

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Counter:
    """Requests actually sent: Redis writes on the socket, SQL statements executed."""

    redis: int = 0
    sql: int = 0
    commands: int = 0


@dataclass
class Sample:
    commands: int
    redis: int
    sql: int
    sql_rows: int
    cpu_tick: float
    cpu_render: float
    wall: float


@dataclass
class Results:
    quiet: list[Sample] = field(default_factory=list)
    fallback: list[Sample] = field(default_factory=list)
    changed: list[Sample] = field(default_factory=list)
    commands: list[dict[str, int]] = field(default_factory=list)


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[str]:
    """A redis-server of our own on a unix socket, stopped by its PID afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH")
    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        stop(proc)


def install_counters() -> Counter:
    """Count Redis requests and SQL statements made by this process."""
    import sqlalchemy as sa
    from redis import Redis
    from redis.client import Pipeline
    from redis.connection import AbstractConnection

    from jobctl import store

    counter = Counter()
    original = AbstractConnection.send_packed_command

    def send(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        counter.redis += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    pipeline_execute = Pipeline.execute
    command = Redis.execute_command

    def execute(self: Pipeline, raise_on_error: bool = True) -> list[object]:
        counter.commands += len(self.command_stack)
        return pipeline_execute(self, raise_on_error)

    def execute_command(self: Redis, *args: object, **options: object) -> object:
        counter.commands += 1
        return command(self, *args, **options)

    Pipeline.execute = execute  # type: ignore[method-assign]
    Redis.execute_command = execute_command  # type: ignore[method-assign]

    def on_sql(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            counter.sql += 1

    sa.event.listen(store.get_engine(), "before_cursor_execute", on_sql)
    return counter


def commandstats(url: str) -> dict[str, int]:
    """Calls per command so far, from the server (its own INFO calls left out)."""
    import redis

    conn = redis.Redis.from_url(url)
    try:
        stats = conn.info("commandstats")
    finally:
        conn.close()
    return {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in stats.items()
        if key not in ("cmdstat_info", "cmdstat_client|setinfo", "cmdstat_hello")
    }


def measure_tick(watcher: Any, counter: Counter) -> Sample:
    """One refresh: the watcher's poll, then drawing the screen a terminal would show."""
    from rich.console import Console

    from jobctl.cli.watchview import watch_view

    before = (counter.redis, counter.sql, counter.commands)
    wall, cpu = time.perf_counter(), time.process_time()
    watcher.tick()
    cpu_tick = time.process_time() - cpu
    cpu = time.process_time()
    console = Console(file=io.StringIO(), width=120, height=40, force_terminal=True, color_system="truecolor")
    console.print(watch_view(watcher, 120, 40))
    cpu_render = time.process_time() - cpu
    return Sample(
        commands=counter.commands - before[2],
        redis=counter.redis - before[0],
        sql=counter.sql - before[1],
        sql_rows=watcher.stats.sql_rows,
        cpu_tick=cpu_tick,
        cpu_render=cpu_render,
        wall=time.perf_counter() - wall,
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="jobctl-bench-watch-") as name:
        tmp = Path(name)
        with private_redis(tmp) as redis_url, database(args.backend, tmp) as db_url:
            os.environ.update(
                {
                    "REDIS_URL": redis_url,
                    "DATABASE_URL": db_url,
                    "JOBCTL_DATA_DIR": str(tmp),
                    "JOBCTL_TASKS": "",
                    "PYTHONPATH": str(ROOT),
                }
            )
            from jobctl import schema, service

            if args.backend != "sqlite":
                schema.upgrade_schema()
            jobs = service.submit_jobs(
                [
                    service.JobRequest(
                        name=f"bench job {i}",
                        task="process",
                        args={"steps": 100_000, "min_delay": 0.05, "max_delay": 0.05, "failure_rate": 0},
                    )
                    for i in range(args.jobs)
                ]
            )
            ids = [j.id for j in jobs if j.id is not None]
            worker = subprocess.Popen(
                [sys.executable, "-m", "jobctl", "worker", "-c", str(args.workers)],
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                measure(args, ids, redis_url)
            finally:
                stop(worker)


def measure(args: argparse.Namespace, ids: list[int], redis_url: str) -> None:
    from jobctl import service, store
    from jobctl.watching import Watcher

    deadline = time.monotonic() + 60
    while sum(1 for j in store.get_jobs(ids).values() if j.status == "processing") < args.workers:
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not start their jobs")
        time.sleep(0.2)
    counter = install_counters()
    results = Results()
    victims = ids[-args.cancel :]  # pending at the back of the queue
    for _ in range(args.runs):
        watcher = Watcher(ids, fallback_interval=args.fallback)
        watcher.start()
        for _ in range(args.refreshes):
            time.sleep(args.interval)
            before = commandstats(redis_url)
            sample = measure_tick(watcher, counter)
            after = commandstats(redis_url)
            if watcher.stats.fallback:
                results.fallback.append(sample)
                continue
            results.quiet.append(sample)
            results.commands.append({k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k)})
        # State changes: these rows, and only these, are read back (no fallback due in this watcher).
        changed = Watcher(ids, fallback_interval=3600)
        changed.start()
        for job_id in victims:
            service.cancel_job(job_id)
        results.changed.append(measure_tick(changed, counter))
        for job_id in victims:  # queued again, so the next run watches as many active jobs
            service.retry_job(job_id)
    counts = watcher.counts()
    naive = measure_naive(ids, counter)
    report(args, results, counts, naive)


def measure_naive(ids: list[int], counter: Counter) -> Sample:
    """The refresh a per-job poll would do: `jobctl show`'s path (one SQL read + Redis read) per job."""
    from jobctl import service

    samples = []
    for _ in range(3):
        before = (counter.redis, counter.sql)
        wall, cpu = time.perf_counter(), time.process_time()
        for job_id in ids:
            service.show_job(job_id)
        samples.append(
            Sample(
                0,
                counter.redis - before[0],
                counter.sql - before[1],
                len(ids),
                time.process_time() - cpu,
                0.0,
                time.perf_counter() - wall,
            )
        )
    return sorted(samples, key=lambda s: s.cpu_tick)[1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(args: argparse.Namespace, r: Results, counts: Any, naive: Sample) -> None:
    from jobctl.cli.watch import summary_text

    med = statistics.median
    quiet = r.quiet
    print(
        f"watching {args.jobs} jobs on {args.backend}, {args.runs} runs x {args.refreshes} refreshes "
        f"{args.interval:g} s apart; at the end: {summary_text(counts)}"
    )
    print(
        f"quiet refresh ({len(quiet)}):   Redis round trips {med(s.redis for s in quiet):g} "
        f"(max {max(s.redis for s in quiet)}), SQL queries {med(s.sql for s in quiet):g} "
        f"(max {max(s.sql for s in quiet)})"
    )
    commands = r.commands[len(r.commands) // 2]
    ours = {k: commands.pop(k, 0) for k in ("hmget", "lpos")}
    print(
        f"  Redis commands in that round trip: {med(s.commands for s in quiet):g}; the server's INFO "
        f"commandstats over one refresh, workers included: hmget {ours['hmget']}, lpos {ours['lpos']}, "
        f"{sum(commands.values())} others"
    )
    print(
        f"  CPU: poll {ms(med(s.cpu_tick for s in quiet))}, draw 120x40 screen "
        f"{ms(med(s.cpu_render for s in quiet))}; wall {ms(med(s.wall for s in quiet))} (medians)"
    )
    if r.changed:
        c = r.changed
        print(
            f"after cancelling {args.cancel} jobs: Redis round trips {med(s.redis for s in c):g}, "
            f"SQL queries {med(s.sql for s in c):g} reading {med(s.sql_rows for s in c):g} rows, "
            f"CPU {ms(med(s.cpu_tick + s.cpu_render for s in c))}"
        )
    if r.fallback:
        f = r.fallback
        print(
            f"fallback refresh (every {args.fallback:g} s, {len(f)}): Redis round trips "
            f"{med(s.redis for s in f):g}, SQL queries {med(s.sql for s in f):g} (statuses of every "
            f"active row; full rows read: {med(s.sql_rows for s in f):g}), "
            f"CPU {ms(med(s.cpu_tick + s.cpu_render for s in f))}"
        )
    per = med(s.cpu_tick + s.cpu_render for s in quiet)
    print(
        f"naive per-job poll (`show` for each job): Redis round trips {naive.redis}, SQL queries "
        f"{naive.sql}, CPU {ms(naive.cpu_tick)}, wall {ms(naive.wall)}"
    )
    trips = med(s.redis + s.sql for s in quiet)
    print(
        f"ratio naive/watch: round trips {(naive.redis + naive.sql) / max(1, trips):.0f}x, "
        f"CPU {naive.cpu_tick / per:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--fallback", type=float, default=3.0)
    parser.add_argument("--cancel", type=int, default=25)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
