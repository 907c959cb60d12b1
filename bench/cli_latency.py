"""CLI latency: `jobctl --help`, `list` (with many rows stored), `show`, `submit` vs `rq info`.

    python -m bench.cli_latency [--rows 100000] [--runs 7] [--backend sqlite|postgres|both]

Every command runs as a fresh process, alternating with the reference `rq info`; medians of --runs.
"""

from __future__ import annotations

import argparse
import subprocess
import time

import sqlalchemy as sa

from bench.harness import add_backend_option, backends, environment, jobctl, median


def fill(rows: int) -> None:
    """Store `rows` completed jobs quickly, straight through SQL."""
    from jobctl import store
    from jobctl.models import utcnow

    now = utcnow()
    batch = [
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


def measure(kind: str, rows: int, runs: int) -> None:
    with environment(kind) as env:
        fill(rows)
        commands = {
            "--help": jobctl("--help"),
            "list": jobctl("list"),
            "list -s failed": jobctl("list", "-s", "failed"),
            f"show {rows // 2}": jobctl("show", str(rows // 2)),
            "submit": jobctl("submit", "x", "-t", "bench.noop"),
        }
        reference = ["rq", "info", "-u", env["REDIS_URL"]]
        results: dict[str, list[float]] = {name: [] for name in commands}
        ref: list[float] = []
        timed(reference, env)  # warm the page cache
        for _ in range(runs):
            for name, cmd in commands.items():
                ref.append(timed(reference, env))
                results[name].append(timed(cmd, env))
        base = median(ref)
        print(f"\n{kind}: {rows} rows stored, {runs} runs each (median seconds)")
        print(f"  {'rq info (reference)':24} {base:6.3f}")
        for name, values in results.items():
            print(f"  {'jobctl ' + name:24} {median(values):6.3f}  ratio {median(values) / base:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    add_backend_option(parser)
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.rows, args.runs)


if __name__ == "__main__":
    main()
