"""Zero setup costs: a short command with the embedded Redis cold (started and stopped by the command)
versus warm (kept up by another process), and the wall time of `jobctl demo`.

    .venv/bin/python bench/embedded.py [--runs 5] [--no-demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD = (
    "import os, sys, time; from pathlib import Path; from jobctl.embedded import ensure_embedded_redis; "
    "ensure_embedded_redis(Path(os.environ['JOBCTL_DATA_DIR'])); print('up', flush=True); sys.stdin.read()"
)


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBCTL_", "REDIS_", "POSTGRES_")) and k != "DATABASE_URL"}  # fmt: skip
    return {**env, "JOBCTL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def in_process(env: dict[str, str], runs: int) -> float:
    """Median seconds for ensure + release of the embedded server inside one process (the server's share)."""
    code = (
        "import os, time; from pathlib import Path; from jobctl import embedded; "
        "t = time.perf_counter(); embedded.ensure_embedded_redis(Path(os.environ['JOBCTL_DATA_DIR'])); "
        "embedded.release_embedded_redis(); print(time.perf_counter() - t)"
    )
    out = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                text=True).stdout) for _ in range(runs)]  # fmt: skip
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-demo", action="store_true")
    opts = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="jobctl-bench-"))
    env = clean_env(data_dir)
    command = [sys.executable, "-m", "jobctl", "workers"]  # a short command that needs Redis
    try:
        timed(command, env)  # creates the SQLite schema and the server's files once
        cold = statistics.median(timed(command, env) for _ in range(opts.runs))
        cold_share = in_process(env, opts.runs)
        holder = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        warm = statistics.median(timed(command, env) for _ in range(opts.runs))
        warm_share = in_process(env, opts.runs)
        holder.communicate("")
        print(f"`jobctl workers`, median of {opts.runs}: cold {cold:.3f} s, warm {warm:.3f} s, "
              f"cold/warm {cold / warm:.2f}")  # fmt: skip
        print(f"embedded server share (ensure + release in-process): cold {cold_share * 1000:.1f} ms, "
              f"warm {warm_share * 1000:.1f} ms")  # fmt: skip
        if not opts.no_demo:
            demo_dir = Path(tempfile.mkdtemp(prefix="jobctl-bench-demo-"))
            try:
                seconds = timed([sys.executable, "-m", "jobctl", "demo"], clean_env(demo_dir))
            finally:
                shutil.rmtree(demo_dir, ignore_errors=True)
            print(f"`jobctl demo` wall time: {seconds:.1f} s")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
