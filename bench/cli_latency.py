"""CLI latency: `jobctl --help`, `list` (with many rows stored), `show`, `submit` vs `rq info`.

    python -m bench.cli_latency [--rows 100000] [--runs 7] [--backend sqlite|postgres|both] [--floor]

Every command runs as a fresh process, alternating with the reference `rq info`; medians of --runs.
--floor adds processes that only import what the commands cannot do without (SQLAlchemy and the
settings, typer and rich, SQLModel for the job model, RQ to enqueue): the least each command could cost.

jobctl and bench are byte-compiled first, as pip compiles an installed package: with
PYTHONDONTWRITEBYTECODE set, an editable install would otherwise compile every jobctl module from
source in every process, while rq's come compiled.
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa

from bench.harness import ROOT, backends, bench_parser, environment, jobctl, median, rq


def fill(rows: int) -> None:
    """Store `rows` completed jobs quickly, straight through SQL."""
    from jobctl import store
    from jobctl.models import utcnow

    now = utcnow()
    batch: list[dict[str, Any]] = [
        {
            "name": f"job {i}",
            "description": "",
            "task": "bench.noop",
            "args": {},
            "queue": "default",
            "status": "completed",
            "attempts": 1,
            "retries": 0,
            "created_at": now,
            "updated_at": now,
            "started_at": now,
            "completed_at": now,
            "task_id": None,
        }
        for i in range(min(rows, 10_000))
    ]
    with store.begin() as conn:
        for start in range(0, rows, len(batch)):
            conn.execute(sa.insert(store.JOB), batch[: min(len(batch), rows - start)])


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def floors(kind: str) -> dict[str, list[str]]:
    """Processes that only import the packages a command needs: the least it could cost."""
    driver = "sqlalchemy.dialects.sqlite" if kind == "sqlite" else "sqlalchemy.dialects.postgresql.psycopg2"
    store = f"sqlalchemy.engine, {driver}, pydantic_settings"
    cli = "typer, typer._adapters, rich.console, rich.table"
    sets = {
        "python": "",
        "typer": "typer",
        "sqlalchemy+settings": store,
        "+typer+rich": f"{store}, {cli}",
        "+sqlmodel": f"{store}, {cli}, jobctl.models",
        "+sqlmodel+rq": f"{store}, {cli}, jobctl.models, rq",
    }
    return {
        f"(floor) {name}": [sys.executable, "-c", f"import {modules}" if modules else "pass"]
        for name, modules in sets.items()
    }


def measure(kind: str, rows: int, runs: int, floor: bool = False) -> None:
    with environment(kind) as env:
        fill(rows)
        commands = {
            "--help": jobctl("--help"),
            "list": jobctl("list"),
            "list -s failed": jobctl("list", "-s", "failed"),
            f"show {rows // 2}": jobctl("show", str(rows // 2)),
            "submit": jobctl("submit", "x", "-t", "bench.noop"),
            **(floors(kind) if floor else {}),
        }
        reference = rq("info", "-u", env["REDIS_URL"])
        results: dict[str, list[float]] = {name: [] for name in commands}
        ref: list[float] = []
        timed(reference, env)  # warm the page cache
        for _ in range(runs):
            for name, cmd in commands.items():
                ref.append(timed(reference, env))
                results[name].append(timed(cmd, env))
        base = median(ref)
        print(f"\n{kind}: {rows} rows stored, {runs} runs each (median seconds)")
        print(f"  {'rq info (reference)':30} {base:6.3f}")
        for name, values in results.items():
            label = name if name.startswith("(floor)") else "jobctl " + name
            print(f"  {label:30} {median(values):6.3f}  ratio {median(values) / base:4.2f}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--floor", action="store_true", help="also time processes that only import")
    args = parser.parse_args()
    for package in ("jobctl", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)
    for kind in backends(args.backend):
        measure(kind, args.rows, args.runs, args.floor)


if __name__ == "__main__":
    main()
