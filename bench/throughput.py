"""Worker throughput: no-op jobs drained by `jobctl worker --burst` vs `rq worker --burst`, same run.

    python -m bench.throughput [--jobs 500] [--rounds 3] [--mode forking|non-forking|both]
                               [--backend sqlite|postgres|both]

Each round fills two queues with the same number of no-op jobs (jobctl's through `submit_jobs`, plain
RQ's with `enqueue_many`), then times each burst worker from start to exit, alternating which goes
first. Forking: `jobctl worker` vs RQ's `Worker` (one work-horse per job); non-forking:
`jobctl worker --no-fork` vs RQ's `SimpleWorker`. Start-up is included in both.
"""

from __future__ import annotations

import subprocess
import time

from bench.harness import backends, bench_parser, environment, jobctl, median, queue_noops, rq

MODES = {
    # mode: (jobctl worker options, rq worker options)
    "forking": ([], []),
    "non-forking": (["--no-fork"], ["-w", "rq.worker.SimpleWorker"]),
}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(kind: str, mode: str, jobs: int, rounds: int) -> None:
    ours_opts, plain_opts = MODES[mode]
    with environment(kind) as env:
        from rq import Queue

        from jobctl import queue, store

        conn = queue.get_redis()
        plain_q = Queue("plain", connection=conn, serializer=queue.serializer())
        # --max-jobs: a worker restarts after 1,000 jobs by default, which would end a burst early.
        ours_cmd = jobctl("worker", "--burst", "-q", "bench", "--max-jobs", str(jobs), *ours_opts)
        plain_cmd = rq("worker", "--burst", "-u", env["REDIS_URL"], "-S", "rq.serializers.JSONSerializer")
        plain_cmd += [*plain_opts, "plain"]
        ours, plain = [], []
        for round_no in range(rounds):
            created = queue_noops(plain_q, jobs)
            if round_no % 2:
                plain.append(timed(plain_cmd, env))
                ours.append(timed(ours_cmd, env))
            else:
                ours.append(timed(ours_cmd, env))
                plain.append(timed(plain_cmd, env))
            rows = store.get_jobs([j.id for j in created if j.id is not None])
            done = sum(1 for r in rows.values() if r.status == "completed")
            assert done == jobs, f"only {done} of {jobs} jobctl jobs completed"
            assert plain_q.count == 0
        ours_rate, plain_rate = jobs / median(ours), jobs / median(plain)
        print(f"\n{kind}: {jobs} no-op jobs per round, {rounds} rounds, {mode} worker")
        for label, times, rate in (
            ("jobctl worker " + " ".join(["--burst", *ours_opts]), ours, ours_rate),
            ("rq worker " + " ".join(["--burst", *plain_opts]), plain, plain_rate),
        ):
            print(f"  {label:40} median {median(times):6.2f}s  {rate:7.1f} jobs/s")
        print(f"  throughput ratio jobctl/plain: {ours_rate / plain_rate:.2f}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    args = parser.parse_args()
    for kind in backends(args.backend):
        for mode in MODES if args.mode == "both" else [args.mode]:
            measure(kind, mode, args.jobs, args.rounds)


if __name__ == "__main__":
    main()
