"""List at scale: filtered, newest-first pages over a million stored jobs, with the query plans.

    python -m bench.list_scale [--rows 1000000] [--runs 5] [--only TEXT] [--backend sqlite|postgres|both]

Stores --rows jobs spread over 90 days (mixed statuses, tasks and queues), then for every filter, the
usual combinations, every sort key both ways and `--before`, prints the time of the list query
(`listing.list_jobs`, 100 rows, median of --runs) at offset 0 and at the deepest offset the CLI allows,
and the plan the database chose for the deeper one. For reference, a page beyond that limit. Then the
whole `jobctl list` command against the start-up of a command that does not query.
Target (issue 7): every query under 50 ms, through an index; the command's time mostly start-up.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from bench.harness import backends, bench_parser, environment, jobctl, median
from jobctl.listing import SORT_KEYS
from jobctl.service import MAX_OFFSET

STATUSES = ("completed", "failed", "cancelled", "pending", "processing")
STATUS_WEIGHTS = (80, 10, 5, 4, 1)
TASKS = ("app.resize", "app.email", "app.report", "app.backup", "app.audit")
TASK_WEIGHTS = (60, 25, 10, 4, 1)
QUEUES = ("default", "emails", "reports")
QUEUE_WEIGHTS = (70, 25, 5)
SPAN = timedelta(days=90)  # the rows' creation times are spread evenly over this, the newest now


def fill(rows: int) -> None:
    """Store `rows` jobs as a long-lived installation would hold them, straight through SQL: ids in
    creation order over SPAN, mixed statuses, tasks and queues, run times on the rows that ran."""
    from jobctl import store
    from jobctl.models import utcnow

    rng = random.Random(7)
    first = utcnow() - SPAN
    step = SPAN / max(1, rows)
    batch_size = 20_000
    for start_at in range(0, rows, batch_size):
        batch = []
        for i in range(start_at, min(rows, start_at + batch_size)):
            status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
            task = rng.choices(TASKS, TASK_WEIGHTS)[0]
            created = first + step * i
            started = created + timedelta(seconds=rng.uniform(0, 60)) if status != "pending" else None
            ended = status in ("completed", "failed", "cancelled")
            completed = started + timedelta(seconds=rng.expovariate(1 / 60)) if ended and started else None
            batch.append(
                {
                    "name": f"{task.split('.')[1]} {i}",
                    "description": "",
                    "task": task,
                    "args": {"path": f"/data/in/{i}.jpg", "width": 800},
                    "queue": rng.choices(QUEUES, QUEUE_WEIGHTS)[0],
                    "status": status,
                    "task_id": f"jobctl-{i}-1",
                    "progress": {"current": 10, "total": 10, "message": "done"} if ended else None,
                    "result": {"count": 3} if status == "completed" else None,
                    "error": "Random processing error" if status == "failed" else None,
                    "attempts": 0 if status == "pending" else 1,
                    "retries": 0,
                    "worker": None if status == "pending" else "host.1234",
                    "created_at": created,
                    "updated_at": completed or started or created,
                    "started_at": started,
                    "completed_at": completed,
                }
            )
        with store.begin() as conn:
            conn.execute(sa.insert(store.JOB), batch)


# Each case is a `jobctl list` command line: every filter alone, combinations people type, every sort
# key both ways, and --before (the keyset for pages deeper than --offset allows).
SORTS = tuple(case for key in SORT_KEYS for case in (("--sort", key), ("--sort", f"-{key}")))
CASES: tuple[tuple[str, ...], ...] = (
    (),
    ("-s", "failed"),
    ("-s", "completed"),
    ("-s", "pending", "-s", "processing"),
    ("-s", "failed", "-s", "cancelled"),
    ("-s", "completed", "-s", "failed"),
    ("-t", "app.email"),
    ("-t", "app.audit"),
    ("-q", "emails"),
    ("--since", "1h"),
    ("--since", "30d"),
    ("--name", "backup*"),
    ("--name", "*9999*"),
    ("-s", "failed", "-t", "app.resize"),
    ("-s", "failed", "-t", "app.audit"),
    ("-s", "pending", "-s", "processing", "-q", "reports"),
    ("-t", "app.audit", "-q", "reports"),
    ("-s", "failed", "--since", "7d"),
    ("--since", "2h", "--name", "backup*", "--sort", "-duration"),
    ("--before", "20000"),
    ("-s", "failed", "--before", "20000"),
    ("-s", "pending", "-s", "processing", "--before", "20000"),
    *SORTS,
)
BEYOND = ((), ("-s", "completed"), ("-s", "completed", "-s", "failed"))  # pages the CLI no longer allows


def parse_case(args: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments `listing.list_jobs` gets for a `jobctl list` command line."""
    from jobctl.ops import list_filters

    options: dict[str, list[str]] = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        options.setdefault(flag.lstrip("-"), []).append(value)
    (since,), (name,), (sort,), (before,) = (
        options.get(k, [None]) for k in ("since", "name", "sort", "before")
    )
    return {
        "statuses": options.get("s", []),
        "task": options.get("t", [None])[0],
        "queue": options.get("q", [None])[0],
        "before": int(before) if before else None,
        **list_filters(since=since, name=name, sort=sort),
    }


def explain(kind: str, statement: str, params: Any) -> list[str]:
    """The plan the database chose for a statement, one line per step."""
    from jobctl import store

    prefix = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN (COSTS OFF) "
    with store.get_engine().connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, params).all()
    return [str(tuple(r)[-1]) for r in rows]


def time_case(case: tuple[str, ...], offsets: list[int], runs: int) -> tuple[list[float], list[int]]:
    """Median milliseconds of the list query at each offset (after one warm-up), and rows returned."""
    from jobctl import listing

    kwargs = parse_case(case)
    times, found = [], []
    for offset in offsets:
        samples = []
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            jobs = listing.list_jobs(limit=100, offset=offset, **kwargs)
            samples.append((time.perf_counter() - t0) * 1000)
        times.append(median(samples[1:]))
        found.append(len(jobs))
    return times, found


def report(kind: str, offsets: list[int], runs: int, only: str | None = None, plans: bool = True) -> None:
    """Every case at each offset, and the plan of its last query."""
    from jobctl import store

    seen: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        seen.append((args[2], args[3]))

    engine = store.get_engine()
    sa.event.listen(engine, "before_cursor_execute", capture)
    slow = []
    try:
        for case in CASES:
            label = " ".join(case) or "(no filter)"
            if only and only not in label:
                continue
            times, found = time_case(case, offsets, runs)
            cells = " ".join(f"{t:8.1f}{'*' if n < 100 else ' '}" for t, n in zip(times, found, strict=True))
            flag = "  over 50 ms" if max(times) >= 50 else ""
            print(f"  {label:58}{cells}{flag}")
            if flag:
                slow.append(label)
            if plans:
                for line in explain(kind, *seen[-1]):
                    print(f"        {line}")
            seen.clear()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    print(f"  {len(slow)} of the cases took 50 ms or more: {', '.join(slow) or 'none'}")


def beyond(rows: int, runs: int) -> None:
    """The last page, which --offset no longer reaches, against a page as far back through --before."""
    print(
        f"  for reference, the last page (offset {rows - 100}, beyond --offset's limit), and a page as far"
        " back through --before:"
    )
    for case in BEYOND:
        label = " ".join(case) or "(no filter)"
        (deep,), _ = time_case(case, [rows - 100], runs)
        (keyset,), _ = time_case((*case, "--before", "200"), [0], runs)
        print(f"  {label:58}{deep:8.1f} ms   --before 200: {keyset:6.1f} ms")


def command_times(env: dict[str, str], runs: int) -> None:
    """The whole `jobctl list` command against the start-up of commands that do not query."""

    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - t0) * 1000

    commands = {
        "start-up: python -c 'import jobctl.cli.jobs, jobctl.service'": [
            sys.executable,
            "-c",
            "import jobctl.cli.jobs, jobctl.service",
        ],
        "start-up: jobctl --help": jobctl("--help"),
        "jobctl list --before 1 (no rows: imports, connections, schema check)": jobctl(
            "list", "--before", "1"
        ),
        "jobctl list": jobctl("list"),
        f"jobctl list -s failed --offset {MAX_OFFSET}": jobctl(
            "list", "-s", "failed", "--offset", str(MAX_OFFSET)
        ),
        "jobctl list --before 20000": jobctl("list", "--before", "20000"),
        "jobctl list --since 2h --name 'backup*' --sort -duration": jobctl(
            "list", "--since", "2h", "--name", "backup*", "--sort", "-duration"
        ),
    }
    print(f"  whole commands, median of {runs} (ms):")
    for label, cmd in commands.items():
        print(f"  {label:72}{median([timed(cmd) for _ in range(runs)]):6.0f}")


def measure(kind: str, rows: int, runs: int, only: str | None) -> None:
    with environment(kind) as env:
        from jobctl import store

        t0 = time.perf_counter()
        fill(rows)
        print(f"\n{kind}: {rows} jobs stored in {time.perf_counter() - t0:.0f} s")
        if kind == "postgres":
            # What autovacuum does after a bulk load: statistics, and the visibility map that lets
            # an index-only scan skip the table.
            with store.get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE job")
        offsets = [0, MAX_OFFSET]
        print(
            f"  list query, 100 rows, median of {runs}, ms at offset {offsets[0]} and {offsets[1]} "
            "(* fewer than 100 rows), and the plan of the second:"
        )
        report(kind, offsets, runs, only)
        beyond(rows, runs)
        command_times(env, runs)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", help="time only the cases whose command line contains this text")
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.rows, args.runs, args.only)


if __name__ == "__main__":
    main()
