"""How long until a job whose worker died is found and failed, at jobctl's default settings.

Victim workers each run a long job; each victim (worker and work-horse, as in a machine loss) is
SIGKILLed at a staggered moment, and the time until its row leaves `processing` is measured. An
observer worker does the finding, as part of its periodic reconciliation:

- same host: the observer sees that the dead processes are gone at its next pass;
- other host: the observer runs in a PID namespace of its own (`unshare`), so it cannot look at the
  victims' processes and must wait for their heartbeats to expire (JOBCTL_LOST_AFTER).

    python -m bench.lost_worker [--victims 5] [--lost-after 45] [--interval 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402


def start_worker(env: dict[str, str], log: Path, queue: str, isolate: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "jobctl", "worker", "-q", queue]
    if isolate:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the worker (or unshare and its worker)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def measure(victims: int, stagger: float, env: dict[str, str], work: Path, other_host: bool) -> list[float]:
    import redis

    from jobctl import service, store

    conn = redis.Redis.from_url(env["REDIS_URL"])
    observer = start_worker(env, work / f"observer-{other_host}.log", "observer", isolate=other_host)
    # Only the observer reconciles: a surviving victim would see its dead neighbours' processes.
    quiet = {**env, "JOBCTL_RECONCILE_INTERVAL": "86400"}
    workers = [
        start_worker(quiet, work / f"victim-{other_host}-{i}.log", "default", False) for i in range(victims)
    ]
    try:
        jobs = service.submit_jobs(
            [
                service.JobRequest(name=f"victim {i}", task="sleep", args={"seconds": 3600})
                for i in range(victims)
            ]
        )
        ids = [j.id for j in jobs if j.id is not None]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = store.get_jobs(ids)
            if all(rows[i].status == "processing" for i in ids) and all(
                conn.exists(f"jobctl:alive:job:jobctl-{i}-1") for i in ids
            ):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the victim jobs did not all start")
        time.sleep(2)
        killed_at: dict[int, float] = {}
        for job_id in ids:
            beat = json.loads(conn.get(f"jobctl:alive:job:jobctl-{job_id}-1") or b"{}")
            horse = int(beat["pid"])
            worker = int(Path(f"/proc/{horse}/stat").read_text().rsplit(")", 1)[1].split()[1])
            killed_at[job_id] = time.monotonic()
            os.kill(worker, signal.SIGKILL)
            os.kill(horse, signal.SIGKILL)
            time.sleep(stagger)
        found: dict[int, float] = {}
        deadline = time.monotonic() + 300
        while len(found) < len(ids) and time.monotonic() < deadline:
            rows = store.get_jobs(ids)
            for job_id in ids:
                if job_id not in found and rows[job_id].status != "processing":
                    found[job_id] = time.monotonic() - killed_at[job_id]
            time.sleep(0.1)
        error = store.get_job(ids[0]).error or ""  # type: ignore[union-attr]
        print(f"  recorded reason, e.g.: {error.splitlines()[0] if error else '-'}")
        return [found[i] for i in ids if i in found]
    finally:
        for proc in [observer, *workers]:
            stop(proc)


def main(argv: list[str] | None = None) -> int:
    from jobctl.config import Settings

    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victims", type=int, default=5)
    parser.add_argument("--lost-after", type=float, default=defaults["lost_after"].default)
    parser.add_argument("--interval", type=float, default=defaults["reconcile_interval"].default)
    parser.add_argument("--same-host-only", action="store_true")
    args = parser.parse_args(argv)
    stagger = args.interval / args.victims  # kills land at different points of the observer's cycle

    work = Path(tempfile.mkdtemp(prefix="jobctl-lost-"))
    with RedisServer() as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url, "DATABASE_URL": f"sqlite:///{work / 'jobctl.db'}",
            "JOBCTL_DATA_DIR": str(work), "JOBCTL_TASKS": "tests.sample_tasks", "PYTHONPATH": str(ROOT),
            "JOBCTL_LOST_AFTER": str(args.lost_after), "JOBCTL_RECONCILE_INTERVAL": str(args.interval),
        }  # fmt: skip
        os.environ.update(env)
        print(f"JOBCTL_LOST_AFTER={args.lost_after:g}s JOBCTL_RECONCILE_INTERVAL={args.interval:g}s, "
              f"{args.victims} victims killed {stagger:.1f}s apart")  # fmt: skip
        scenarios = [("same host", False)]
        if not args.same_host_only and shutil.which("unshare"):
            scenarios.append(("other host (heartbeats expire)", True))
        for label, other_host in scenarios:
            delays = measure(args.victims, stagger, env, work, other_host)
            print(
                f"{label}: found after median {statistics.median(delays):.1f}s "
                f"(min {min(delays):.1f}s, max {max(delays):.1f}s, n={len(delays)}): "
                + ", ".join(f"{d:.1f}" for d in delays)
            )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
