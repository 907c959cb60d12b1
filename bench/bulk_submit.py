"""Bulk submit: `jobctl submit --from FILE` vs a plain loop of `Queue.enqueue`, same jobs, same run.

    python -m bench.bulk_submit [--jobs 10000] [--rounds 3] [--backend sqlite|postgres|both]

Both sides run as fresh processes (start-up included), alternating, and each round checks that every
job is in the store (jobctl) and on the queue (both).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import environment, jobctl, median, run_each_backend

PLAIN_LOOP = """
import sys
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
q = Queue("plain", connection=Redis.from_url(sys.argv[1]), serializer=JSONSerializer)
for i in range(int(sys.argv[2])):
    q.enqueue("bench.plain.noop", description=f"job {i}", job_timeout=1800, result_ttl=3600)
"""


def measure(kind: str, jobs: int, rounds: int) -> None:
    with environment(kind) as env:
        from jobctl import queue, store

        conn = queue.get_redis()
        path = Path(env["JOBCTL_DATA_DIR"]) / "jobs.jsonl"
        path.write_text(
            "".join(json.dumps({"name": f"job {i}", "task": "bench.noop"}) + "\n" for i in range(jobs))
        )
        ours, plain = [], []
        for _ in range(rounds):
            conn.delete("rq:queue:default", "rq:queue:plain")
            before = store.max_job_id() if hasattr(store, "max_job_id") else 0
            t0 = time.perf_counter()
            out = subprocess.run(
                jobctl("submit", "--from", str(path)), env=env, capture_output=True, text=True
            )
            ours.append(time.perf_counter() - t0)
            assert out.returncode == 0, out.stderr
            ids = [int(x) for x in out.stdout.split()]
            assert len(ids) == jobs and min(ids) > before
            assert conn.llen("rq:queue:default") == jobs, (
                conn.llen("rq:queue:default"),
                conn.keys("rq:queue:*"),
            )
            assert len(store.get_jobs(ids)) == jobs

            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", PLAIN_LOOP, env["REDIS_URL"], str(jobs)], env=env, check=True
            )
            plain.append(time.perf_counter() - t0)
            assert conn.llen("rq:queue:plain") == jobs
        print(f"\n{kind}: {jobs} jobs, {rounds} rounds (seconds, start-up included)")
        print(f"  jobctl submit --from   median {median(ours):6.2f}  ({jobs / median(ours):7.0f} jobs/s)")
        print(f"  plain Queue.enqueue    median {median(plain):6.2f}  ({jobs / median(plain):7.0f} jobs/s)")
        print(f"  speed-up jobctl vs plain loop: {median(plain) / median(ours):.2f}x")


def main() -> None:
    run_each_backend(__doc__, measure, jobs=10_000, rounds=3)


if __name__ == "__main__":
    main()
