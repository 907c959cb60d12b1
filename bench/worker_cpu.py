"""Where a burst worker's time goes: CPU and page faults per job, in the worker and in its work-horses.

    python -m bench.worker_cpu [--jobs 500] [--rounds 3] [--backend sqlite|postgres|both]

Each round drains the same number of no-op jobs with `jobctl worker --burst` and `rq worker --burst`
(forking), alternating, each run inside a wrapper that reports, as the worker exits, its own CPU time
and minor page faults and those of the work-horses it waited for, and its own (anonymous) memory, whose
page tables each fork copies. Per job, medians of --rounds; the worker's figures include its start-up.
Throughput is CPU-bound here: the wall time per job is about the worker's and the work-horse's CPU
added up, so this shows which side a difference comes from (bench/throughput.py gives the ratio
itself).

Then, per step of the worker's loop (taking a job off the queue, jobctl's claim, RQ's preparation, the
fork, waiting for the work-horse): its CPU time and page faults per job, from one more run of each
worker with those steps timed (the timing itself adds a little to both; rq has no claim).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.harness import environment, median, queue_noops, rq, run_each_backend

WRAPPER = r"""
import atexit, resource, sys

def report():
    own, horses = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:  # the memory a fork copies the page tables of, and an exit frees (Linux)
        with open("/proc/self/status") as status:
            anon = next(int(row.split()[1]) for row in status if row.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):
        anon = 0.0
    print("RUSAGE", own.ru_minflt, own.ru_utime + own.ru_stime, horses.ru_minflt,
          horses.ru_utime + horses.ru_stime, anon, file=sys.stderr)

atexit.register(report)  # in the worker only: a work-horse ends with os._exit
kind, phases, sys.argv = sys.argv[1], sys.argv[2] == "steps", sys.argv[3:]
if phases:
    import time
    from collections import defaultdict

    from rq.worker import base, worker_classes

    spent = defaultdict(lambda: [0, 0.0, 0])  # step: [calls, CPU seconds, page faults]

    def timed(cls, name, step):
        method = getattr(cls, name)

        def wrapper(*args, **kwargs):
            cpu, faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            try:
                return method(*args, **kwargs)
            finally:
                row = spent[step]
                row[0] += 1
                row[1] += time.process_time() - cpu
                row[2] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

        setattr(cls, name, wrapper)

    timed(base.BaseWorker, "dequeue_job_and_maintain_ttl", "dequeue")
    timed(base.BaseWorker, "prepare_execution", "prepare")
    timed(worker_classes.Worker, "fork_work_horse", "fork")
    timed(worker_classes.Worker, "monitor_work_horse", "wait")
    if kind == "jobctl":
        from jobctl import handoff

        timed(handoff.Handoff, "claim", "claim")
    atexit.register(lambda: [print("STEP", k, *v, file=sys.stderr) for k, v in spent.items()])
if kind == "jobctl":
    from jobctl.cli import main
else:
    from rq.cli import main
main()
"""


def run(kind: str, argv: list[str], env: dict[str, str], jobs: int, steps: bool = False) -> dict[str, float]:
    t0 = time.perf_counter()
    mode = "steps" if steps else "whole"
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, kind, mode, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    if steps:  # per step: CPU ms and page faults per job
        rows = [row.split() for row in done.stderr.splitlines() if row.startswith("STEP ")]
        return {
            f"{step} {unit}": float(value) / jobs * scale
            for _, step, _calls, cpu, faults in rows
            for unit, value, scale in (("CPU ms", cpu, 1000), ("faults", faults, 1))
        }
    line = [row for row in done.stderr.splitlines() if row.startswith("RUSAGE ")][-1].split()
    own_faults, own_cpu, horse_faults, horse_cpu = int(line[1]), float(line[2]), int(line[3]), float(line[4])
    anon = float(line[5])
    return {
        "wall ms": wall / jobs * 1000,
        "worker CPU ms": own_cpu / jobs * 1000,
        "worker faults": own_faults / jobs,
        "horse CPU ms": horse_cpu / jobs * 1000,
        "horse faults": horse_faults / jobs,
        "worker anon MiB": anon,
    }


def measure(kind: str, jobs: int, rounds: int) -> None:
    with environment(kind) as env:
        from rq import Queue

        from jobctl import queue

        plain_q = Queue("plain", connection=queue.get_redis(), serializer=queue.serializer())
        # --max-jobs: a worker restarts after 1,000 jobs by default, which would end a burst early.
        ours_cmd = ["jobctl", "worker", "--burst", "-q", "bench", "--max-jobs", str(jobs)]
        plain_cmd = rq("worker", "--burst", "-u", env["REDIS_URL"], "-S", "rq.serializers.JSONSerializer")
        plain_cmd.append("plain")
        results: dict[str, list[dict[str, float]]] = {"jobctl": [], "rq": []}
        for round_no in range(rounds):
            queue_noops(plain_q, jobs)
            order = [("jobctl", ours_cmd), ("rq", plain_cmd)]
            for name, argv in order[:: -1 if round_no % 2 else 1]:
                results[name].append(run(name, argv, env, jobs))
        print(f"\n{kind}: {jobs} no-op jobs per round, {rounds} rounds, forking workers (per job, medians)")
        keys = list(results["jobctl"][0])
        print("  " + " " * 8 + "".join(f"{key:>16}" for key in keys))
        for name, rows in results.items():
            print(f"  {name:8}" + "".join(f"{median([r[key] for r in rows]):16.2f}" for key in keys))
        queue_noops(plain_q, jobs)
        steps = {name: run(name, argv, env, jobs, steps=True) for name, argv in order}
        print("  per step of the worker, one more run each (per job):")
        print(f"    {'':10}{'jobctl CPU ms':>15}{'faults':>8}{'rq CPU ms':>12}{'faults':>8}")
        for step in ("dequeue", "claim", "prepare", "fork", "wait"):
            cpu = {name: steps[name].get(f"{step} CPU ms", 0.0) for name in steps}
            faults = {name: steps[name].get(f"{step} faults", 0.0) for name in steps}
            cells = f"{cpu['jobctl']:15.2f}{faults['jobctl']:8.0f}{cpu['rq']:12.2f}{faults['rq']:8.0f}"
            print(f"    {step:10}{cells}")


def main() -> None:
    run_each_backend(__doc__, measure, jobs=500, rounds=3)


if __name__ == "__main__":
    main()
