"""Worker throughput: no-op jobs drained by `jobctl worker --burst` vs `rq worker --burst`, same run.

    python -m bench.throughput [--jobs 500] [--rounds 3] [--backend sqlite|postgres|both]

Each round fills two queues with the same number of no-op jobs (jobctl's through `submit_jobs`, plain
RQ's with `enqueue_many`), then times each burst worker from start to exit, alternating which goes
first. Both are RQ's forking worker, one work-horse per job. Start-up is included in both.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from bench.harness import add_backend_option, backends, environment, jobctl, median


def measure(kind: str, jobs: int, rounds: int) -> None:
    with environment(kind) as env:
        from rq import Queue

        from jobctl import queue, service, store

        conn = queue.get_redis()
        plain_q = Queue("plain", connection=conn, serializer=queue.serializer())
        ours, plain = [], []
        for round_no in range(rounds):
            created = service.submit_jobs(
                [service.JobRequest(name=f"n{i}", task="bench.noop", queue="bench") for i in range(jobs)]
            )
            plain_q.enqueue_many([Queue.prepare_data("bench.plain.noop") for _ in range(jobs)])

            def run_ours() -> float:
                t0 = time.perf_counter()
                subprocess.run(
                    jobctl("worker", "--burst", "-q", "bench"),
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return time.perf_counter() - t0

            def run_plain() -> float:
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        "rq",
                        "worker",
                        "--burst",
                        "-u",
                        env["REDIS_URL"],
                        "-S",
                        "rq.serializers.JSONSerializer",
                        "plain",
                    ],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return time.perf_counter() - t0

            if round_no % 2:
                plain.append(run_plain())
                ours.append(run_ours())
            else:
                ours.append(run_ours())
                plain.append(run_plain())
            rows = store.get_jobs([j.id for j in created if j.id is not None])
            done = sum(1 for r in rows.values() if r.status == "completed")
            assert done == jobs, f"only {done} of {jobs} jobctl jobs completed"
            assert plain_q.count == 0
        ours_rate, plain_rate = jobs / median(ours), jobs / median(plain)
        print(f"\n{kind}: {jobs} no-op jobs per round, {rounds} rounds, forking worker")
        print(f"  jobctl worker --burst   median {median(ours):6.2f}s  {ours_rate:7.1f} jobs/s")
        print(f"  rq worker --burst       median {median(plain):6.2f}s  {plain_rate:7.1f} jobs/s")
        print(f"  throughput ratio jobctl/plain: {ours_rate / plain_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    add_backend_option(parser)
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.jobs, args.rounds)


if __name__ == "__main__":
    main()
