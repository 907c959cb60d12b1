"""Chaos: real workers on a private Redis and PostgreSQL, with faults, then counts of what went wrong.

During a run of short jobs it SIGKILLs work-horses and whole workers (restarting them), crashes and
restarts Redis (no persistence: its data is lost), stops PostgreSQL for a while, and cancels jobs at
random moments, many just after they were submitted, as workers dequeue them. Then it waits for the
workers and their reconciliation to settle, and checks:

- lost: a job whose submit succeeded but that has no row, or a row that is not terminal and that
  nothing in Redis will ever run;
- stuck: rows not terminal at the end;
- disagree: SQL and Redis disagree (a terminal row that Redis still queues or shows as started, an
  active row that Redis does not hold);
- cancelled-then-ran: a cancel returned, and afterwards the job started, or its row says completed;
- recorded twice: a row that reached a terminal state more than once, or left one (a trigger records
  every status change of every row).

    python -m bench.chaos --jobs 400 --kills 200 --cancels 500 --seed 7

Prints its seed and settings first, the counts last (`--json` for a machine-readable line), and
exits 1 when any of the five counts is not zero. Needs redis-server and PostgreSQL's initdb/pg_ctl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos_report import AUDIT_SQL, check, print_report  # noqa: E402
from tests.servers import PostgresServer, RedisServer  # noqa: E402


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def ours(pid: int) -> bool:
    """True if `pid` is one of this run's processes (it carries this run's ledger in its environment)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"JOBCTL_CHAOS_LEDGER={os.environ.get('JOBCTL_CHAOS_LEDGER')}".encode() in environ


def kill(pid: int) -> None:
    """SIGKILL one of this run's processes (never a recycled PID that now belongs to someone else)."""
    if ours(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Run:
    """Everything the fault threads did, for the final report."""

    submitted: list[int] = field(default_factory=list)
    refused_submits: int = 0
    cancels: list[tuple[int, float, bool, str]] = field(default_factory=list)  # id, returned at, ok, message
    cancel_errors: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    machine_losses: list[tuple[str, float]] = field(default_factory=list)  # rq id, killed at
    redis_restarts: int = 0
    pg_outages: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    submitting_done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workers:
    """`jobctl worker` processes, started, killed and replaced by PID."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: set[int] = set()  # every process of ours, for the final clean-up
        self.started = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            self.started += 1
            out = open(self.logs / f"worker-{self.started}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobctl", "worker"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
            out.close()
            self.procs.append(proc)
            self.seen.add(proc.pid)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        with self.lock:
            self.procs = [p for p in self.procs if p.poll() is None]
            return list(self.procs)

    def note_descendants(self) -> None:
        for proc in self.alive():
            for child in children(proc.pid):
                self.seen.add(child)
                self.seen.update(children(child))

    def stop_all(self) -> None:
        self.note_descendants()
        for proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in list(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill(proc.pid)
                proc.wait(10)
        for pid in self.seen:  # orphaned horses and schedulers of killed workers
            kill(pid)


def horses(conn) -> list[tuple[str, int]]:
    """(rq id, pid) of every running attempt, from their heartbeats."""
    found = []
    for key in conn.scan_iter("jobctl:alive:job:*"):
        raw = conn.get(key)
        if raw:
            found.append((key.decode().rsplit(":", 1)[1], int(json.loads(raw)["pid"])))
    return found


def submitter(run: Run, rng: random.Random, jobs: int, rate: float) -> None:
    from jobctl import service
    from jobctl.errors import JobctlError

    made = 0
    while made < jobs and not run.stop.is_set():
        batch = min(jobs - made, rng.randint(1, 5))
        requests = [
            service.JobRequest(
                name=f"chaos {made + i}",
                task="chaos",
                args={"ms": rng.randint(100, 900)},
                retries=rng.choice([0, 0, 1, 2]),
            )
            for i in range(batch)
        ]
        try:
            ids = [j.id for j in service.submit_jobs(requests) if j.id is not None]
            with run.lock:
                run.submitted.extend(ids)
        except JobctlError:
            run.refused_submits += batch
        made += batch
        time.sleep(rng.expovariate(rate / 3))
    run.submitting_done.set()


def canceller(run: Run, rng: random.Random, cancels: int, duration: float) -> None:
    from jobctl import service
    from jobctl.errors import JobctlError

    done = 0
    while done < cancels and not run.stop.is_set():
        time.sleep(rng.expovariate(cancels / duration))
        with run.lock:
            if not run.submitted:
                continue
            # most cancels hit the newest jobs: the ones workers are dequeuing right now
            pool = run.submitted[-8:] if rng.random() < 0.7 else run.submitted
            job_id = rng.choice(pool)
        try:
            outcome = service.cancel_job(job_id)
        except JobctlError:
            run.cancel_errors += 1
            continue
        run.cancels.append((job_id, time.time(), outcome.ok, outcome.message))
        done += 1


def killer(run: Run, rng: random.Random, workers: Workers, conn, kills: int, duration: float) -> None:
    done = 0
    while done < kills and not run.stop.is_set():
        time.sleep(rng.expovariate(kills / duration))
        workers.note_descendants()
        try:
            running = horses(conn)
        except Exception:  # Redis is down just now
            running = []
        kind = rng.choices(["horse", "machine", "parent"], weights=[6, 2, 2])[0]
        if kind == "horse":
            if not running:
                continue
            _, pid = rng.choice(running)
            kill(pid)
        else:
            alive = workers.alive()
            if not alive:
                workers.start()
                continue
            proc = rng.choice(alive)
            own = [(rq_id, pid) for rq_id, pid in running if parent_of(pid) == proc.pid]
            doomed = [c for c in children(proc.pid) if kind == "machine" or c not in {p for _, p in own}]
            killed_at = time.time()
            kill(proc.pid)  # first, so it cannot record its horse's death itself
            for child in doomed:
                kill(child)  # the scheduler always; the horse too when the whole machine goes
            proc.wait(10)
            if kind == "machine":
                run.machine_losses.extend((rq_id, killed_at) for rq_id, _ in own)
            workers.start()
        run.kills[kind] += 1
        done += 1


def redis_restarter(
    run: Run, rng: random.Random, redis_server: RedisServer, times: int, duration: float
) -> None:
    for moment in sorted(rng.uniform(0.15, 0.85) * duration for _ in range(times)):
        if run.stop.wait(max(0.0, moment - (time.monotonic() - run_started[0]))):
            return
        log("crashing Redis (its data is lost)")
        redis_server.restart(down_for=rng.uniform(0.5, 2.0))
        run.redis_restarts += 1


def pg_stopper(
    run: Run, rng: random.Random, pg: PostgresServer, times: int, down: float, duration: float
) -> None:
    for moment in sorted(rng.uniform(0.15, 0.85) * duration for _ in range(times)):
        if run.stop.wait(max(0.0, moment - (time.monotonic() - run_started[0]))):
            return
        log(f"stopping PostgreSQL for {down:g}s")
        pg.stop()
        time.sleep(down)
        pg.start()
        run.pg_outages += 1


run_started = [0.0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--cancels", type=int, default=500)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--pg-outages", type=int, default=2)
    parser.add_argument("--pg-down", type=float, default=20.0, help="seconds PostgreSQL stays down")
    parser.add_argument("--duration", type=float, default=150.0, help="seconds over which faults are spread")
    parser.add_argument("--lost-after", type=float, default=5.0, help="JOBCTL_LOST_AFTER for the workers")
    parser.add_argument("--reconcile-interval", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=180.0, help="at most this long to wait at the end")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON line at the end")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    log(f"seed {seed}: {vars(args)}")
    rng = random.Random(seed)

    work = Path(tempfile.mkdtemp(prefix="jobctl-chaos-"))
    servers = contextlib.ExitStack()  # whatever started is stopped, also when the set-up fails
    try:
        redis_server = RedisServer().start()
        servers.callback(redis_server.close)
        pg = PostgresServer().start()
        servers.callback(pg.close)
        database_url = pg.create_database("chaos")
        ledger = work / "ledger"
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": database_url,
            "JOBCTL_DATA_DIR": str(work / "data"),
            "JOBCTL_TASKS": "bench.chaos_tasks",
            "JOBCTL_LOST_AFTER": str(args.lost_after),
            "JOBCTL_RECONCILE_INTERVAL": str(args.reconcile_interval),
            "JOBCTL_CANCEL_GRACE": "0.5",
            "JOBCTL_CHAOS_LEDGER": str(ledger),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(env)
        from jobctl import schema, store

        schema.upgrade_schema()
        with store.begin() as conn:
            conn.exec_driver_sql(AUDIT_SQL)
        import redis

        conn_r = redis.Redis.from_url(redis_server.url, socket_connect_timeout=2, socket_timeout=5)
    except BaseException:
        servers.close()
        raise
    workers = Workers(env, work)
    run = Run()
    try:
        for _ in range(args.workers):
            workers.start()
        time.sleep(3)
        run_started[0] = time.monotonic()
        threads = [
            threading.Thread(
                target=submitter,
                args=(run, random.Random(rng.random()), args.jobs, args.jobs / args.duration),
            ),
            threading.Thread(
                target=canceller, args=(run, random.Random(rng.random()), args.cancels, args.duration)
            ),
            threading.Thread(
                target=killer,
                args=(run, random.Random(rng.random()), workers, conn_r, args.kills, args.duration),
            ),
            threading.Thread(
                target=redis_restarter,
                args=(run, random.Random(rng.random()), redis_server, args.redis_restarts, args.duration),
            ),
            threading.Thread(
                target=pg_stopper,
                args=(run, random.Random(rng.random()), pg, args.pg_outages, args.pg_down, args.duration),
            ),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.duration * 3
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            time.sleep(1)
            log(
                f"submitted {len(run.submitted)}, cancels {len(run.cancels)}, kills {sum(run.kills.values())}"
            )
        run.stop.set()
        for t in threads:
            t.join(60)
        log("faults done; waiting for every row to settle")
        settle_deadline = time.monotonic() + args.settle
        while time.monotonic() < settle_deadline:
            try:
                if not store.active_jobs():
                    break
            except Exception:
                pass
            time.sleep(1)
        # RQ's leftovers (entries of killed processes) are closed by the next passes after LOST_AFTER;
        # on a loaded machine a pass can come late, so disagreement is looked at again for a while.
        time.sleep(args.lost_after + 2 * args.reconcile_interval)
        report = check(run, store, conn_r, ledger, seed, args)
        tidy_deadline = time.monotonic() + args.lost_after + 10 * args.reconcile_interval
        while report["disagree"] and time.monotonic() < tidy_deadline:
            time.sleep(args.reconcile_interval)
            report = check(run, store, conn_r, ledger, seed, args)
    finally:
        workers.stop_all()
        servers.close()
    print_report(report, args.json)
    bad = ("lost", "stuck", "disagree", "cancelled_then_ran", "recorded_twice")
    if any(report[k] for k in bad):
        print(f"worker logs and the ledger are kept in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
