"""The chaos suite's checks: what a run left behind, counted, and the report printed from it."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.chaos import Run

AUDIT_SQL = """
CREATE TABLE job_audit (
    seq bigserial PRIMARY KEY, job_id integer, old_status text, new_status text,
    old_attempts integer, new_attempts integer, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION job_audit_fn() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO job_audit (job_id, new_status, new_attempts) VALUES (NEW.id, NEW.status, NEW.attempts);
  ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempts IS DISTINCT FROM OLD.attempts THEN
    INSERT INTO job_audit (job_id, old_status, new_status, old_attempts, new_attempts)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER job_audit_t AFTER INSERT OR UPDATE ON job FOR EACH ROW EXECUTE FUNCTION job_audit_fn();
"""
TERMINAL = {"completed", "failed", "cancelled"}


def check(run: Run, store: Any, conn: Any, ledger: Path, seed: int, args: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    from jobctl import queue

    with store.get_engine().connect() as c:
        rows = {r.id: r for r in c.execute(sa.select(store.JOB))}
        audit = list(
            c.execute(
                sa.text(
                    "SELECT job_id, old_status, new_status, old_attempts, new_attempts, "
                    "extract(epoch from at) AS at FROM job_audit ORDER BY seq"
                )
            )
        )
    statuses = Counter(r.status for r in rows.values())
    stuck = [i for i, r in rows.items() if r.status not in TERMINAL]

    # Redis's view of each row's current attempt
    from jobctl import registries

    queued: set[str] = set()
    for name in {queue.rq_queue(r) for r in rows.values()}:
        w = queue.waiting(name)
        queued |= w.queued | w.popped | w.scheduled | w.deferred
    started = set(registries.started_attempts())

    def attempt_of(row) -> int:
        """The attempt a row is on (pending: the next one) or ended with."""
        if row.status == "processing" or (row.status in TERMINAL and row.attempts > 0):
            return int(row.attempts)
        return int(row.attempts) + 1

    current = {i: queue.rq_job_id(i, attempt_of(r)) for i, r in rows.items()}
    states = registries.attempt_states(list(current.values()))
    disagree = []
    for job_id, row in rows.items():
        rq_id, state = current[job_id], states[current[job_id]]
        if row.status in TERMINAL:
            if rq_id in queued or rq_id in started or state.status in ("queued", "started"):
                disagree.append(job_id)
        elif rq_id not in queued and rq_id not in started and state.status not in ("queued", "started"):
            disagree.append(job_id)
    lost = [i for i in run.submitted if i not in rows]
    lost += [i for i in stuck if i in disagree]

    # the ledger: when each attempt's task started and ended
    starts: dict[int, list[float]] = {}
    ends: dict[int, list[float]] = {}
    for line in ledger.read_text().splitlines() if ledger.exists() else []:
        event, rq_id, _pid, at = line.split()
        job_id = int(rq_id.split("-")[1])
        if event == "start":
            starts.setdefault(job_id, []).append(float(at))
        else:
            ends.setdefault(job_id, []).append(float(at))
    cancelled_then_ran = set()
    finished_in_stop_window = 0
    cancelled_kinds: Counter[str] = Counter()
    for job_id, returned_at, ok, message in run.cancels:
        if not ok:
            continue
        was_pending = "(was pending)" in message
        cancelled_kinds["pending" if was_pending else "running"] += 1
        if rows[job_id].status == "completed":
            cancelled_then_ran.add(job_id)
        elif was_pending and any(t > returned_at for t in starts.get(job_id, [])):
            cancelled_then_ran.add(job_id)  # a job cancelled while pending must never start
        elif not was_pending and any(t > returned_at for t in ends.get(job_id, [])):
            finished_in_stop_window += 1  # its task reached its end before the stop signal landed
    terminal_entries: Counter[int] = Counter()
    left_terminal = 0
    for entry in audit:
        if entry.new_status in TERMINAL:
            terminal_entries[entry.job_id] += 1
        if entry.old_status in TERMINAL:
            left_terminal += 1
    recorded_twice = sorted({i for i, n in terminal_entries.items() if n > 1})

    detection = []
    for rq_id, killed_at in run.machine_losses:
        job_id, attempt = queue.parse_rq_job_id(rq_id) or (0, 0)
        leaving = [
            e.at
            for e in audit
            if e.job_id == job_id
            and e.old_status == "processing"
            and e.old_attempts == attempt
            and e.at >= killed_at - 1
        ]
        if leaving:
            detection.append(max(0.0, float(leaving[0]) - killed_at))
    return {
        "seed": seed,
        "jobs_submitted": len(run.submitted),
        "submits_refused": run.refused_submits,
        "kills": sum(run.kills.values()),
        "kills_by_kind": dict(run.kills),
        "cancels": len(run.cancels),
        "cancels_ok": sum(1 for c in run.cancels if c[2]),
        "cancel_errors": run.cancel_errors,
        "redis_restarts": run.redis_restarts,
        "pg_outages": run.pg_outages,
        "pg_down_seconds": args.pg_down,
        "rows": len(rows),
        "statuses": dict(statuses),
        "lost": len(lost),
        "stuck": len(stuck),
        "disagree": len(disagree),
        "cancelled_then_ran": len(cancelled_then_ran),
        "recorded_twice": len(recorded_twice) + left_terminal,
        "jobs_whose_work_ran_twice": sum(1 for times in ends.values() if len(times) > 1),
        "cancelled_pending_running": [cancelled_kinds["pending"], cancelled_kinds["running"]],
        "finished_in_stop_window": finished_in_stop_window,
        "lost_detected_s": {
            "n": len(detection),
            "median": round(statistics.median(detection), 2) if detection else None,
            "max": round(max(detection), 2) if detection else None,
        },
        "examples": {
            "lost": lost[:5],
            "stuck": stuck[:5],
            "disagree": disagree[:5],
            "cancelled_then_ran": sorted(cancelled_then_ran)[:5],
            "recorded_twice": recorded_twice[:5],
        },
    }


def print_report(report: dict[str, Any], as_json: bool) -> None:
    print()
    print(f"seed {report['seed']}")
    print(
        f"jobs submitted {report['jobs_submitted']} (refused during outages: {report['submits_refused']}), "
        f"rows {report['rows']}: {report['statuses']}"
    )
    print(
        f"faults: kills {report['kills']} {report['kills_by_kind']}, cancels {report['cancels']} "
        f"({report['cancels_ok']} took effect: {report['cancelled_pending_running'][0]} pending, "
        f"{report['cancelled_pending_running'][1]} running), Redis restarts {report['redis_restarts']}, "
        f"PostgreSQL outages {report['pg_outages']} x {report['pg_down_seconds']:g}s"
    )
    print(
        f"lost {report['lost']}  stuck {report['stuck']}  SQL/Redis disagree {report['disagree']}  "
        f"cancelled-then-ran {report['cancelled_then_ran']}  recorded twice {report['recorded_twice']}"
    )
    print(
        f"jobs whose task ran to its end more than once (an orphan and a retry; at-least-once): "
        f"{report['jobs_whose_work_ran_twice']}"
    )
    print(
        f"running jobs whose task reached its end in the moment before the stop landed (record stays "
        f"cancelled): {report['finished_in_stop_window']}"
    )
    print(f"killed machines found after (seconds): {report['lost_detected_s']}")
    if any(report["examples"].values()):
        print(f"examples: {report['examples']}")
    if as_json:
        print(json.dumps(report))
