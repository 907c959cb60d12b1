"""Dependencies on real workers: `--after` waits for completion, `--after-any` for any end; a dependency
that fails or is cancelled cancels its dependents with a reason, so nothing waits forever."""

from __future__ import annotations

import json
from datetime import datetime

from tests.conftest import show, submit, wait_for


def ended(cli, *ids: int) -> dict[int, dict]:
    """Wait until every job is terminal; their rows."""

    def check() -> dict[int, dict] | None:
        rows = {i: show(cli, i) for i in ids}
        terminal = all(r["status"] in ("completed", "failed", "cancelled") for r in rows.values())
        return rows if terminal else None

    return wait_for(check, 40, 0.2)


def at(row: dict, key: str) -> datetime:
    return datetime.fromisoformat(row[key])


def test_chains_run_in_order_and_failures_cancel_their_dependents(cli, start_worker) -> None:
    start_worker(wait=False)
    first = submit(cli, "first", "-t", "sleep", "-a", "seconds=1")
    second = submit(cli, "second", "-t", "noop", "--after", str(first))
    third = submit(cli, "third", "-t", "noop", "--after", str(second), "--after-any", str(first))
    doomed = submit(cli, "doomed", "-t", "boom", "-a", "message=broken", "--after", str(first))
    child = submit(cli, "child", "-t", "noop", "--after", str(doomed))
    grandchild = submit(cli, "grandchild", "-t", "noop", "--after", str(child))
    cleanup = submit(cli, "cleanup", "-t", "noop", "--after-any", str(doomed))

    waiting = show(cli, third)
    assert waiting["status"] == "pending" and waiting["blocked"] is True
    assert waiting["depends_on"] == [second] and waiting["depends_on_any"] == [first]
    assert waiting["waiting_for"] == [second, first]
    text = cli("show", str(third)).stdout
    assert f"{second} (must complete), {first} (any outcome)" in text and "waiting for" in text
    assert f"pending (waiting for {second}, {first})" in cli("list").stdout

    rows = ended(cli, first, second, third, doomed, child, grandchild, cleanup)
    assert [rows[i]["status"] for i in (first, second, third)] == ["completed"] * 3
    assert at(rows[second], "started_at") >= at(rows[first], "completed_at")
    assert at(rows[third], "started_at") >= at(rows[second], "completed_at")
    assert rows[third]["blocked"] is False and "waiting_for" not in show(cli, third)

    assert rows[doomed]["status"] == "failed"
    assert rows[child]["status"] == "cancelled" and rows[child]["started_at"] is None
    assert rows[child]["error"] == f"cancelled: dependency {doomed} failed"
    assert rows[grandchild]["status"] == "cancelled"
    assert rows[grandchild]["error"] == f"cancelled: dependency {child} cancelled"
    assert rows[cleanup]["status"] == "completed"  # --after-any runs whatever the outcome
    assert f"cancelled: dependency {doomed} failed" in cli("show", str(child)).stdout

    # Depending on a job that already ended is resolved at once.
    out = cli("submit", "late", "-t", "noop", "--after", str(doomed), "--json")
    assert out.exit_code == 0, out
    late = json.loads(out.stdout)
    assert late["status"] == "cancelled" and late["error"] == f"cancelled: dependency {doomed} failed"
    after_done = submit(cli, "after done", "-t", "noop", "--after", str(cleanup))
    assert ended(cli, after_done)[after_done]["status"] == "completed"


def test_a_job_recorded_as_its_worker_claims_the_next_releases_its_dependents(cli, start_worker) -> None:
    """A worker records a job's end in the transaction that claims its next job; the jobs waiting
    for the ended one are released or cancelled from there, before a burst worker runs out of work."""
    good = submit(cli, "good", "-t", "noop")
    bad = submit(cli, "bad", "-t", "boom", "-a", "message=no")
    filler = [submit(cli, f"filler {i}", "-t", "noop") for i in range(2)]
    after_good = submit(cli, "after good", "-t", "noop", "--after", str(good))
    after_bad = submit(cli, "after bad", "-t", "noop", "--after", str(bad))
    worker = start_worker("--burst", wait=False)
    assert worker.proc.wait(60) == 0
    rows = {i: show(cli, i) for i in (good, bad, *filler, after_good, after_bad)}
    assert [rows[i]["status"] for i in (good, *filler, after_good)] == ["completed"] * 4
    assert at(rows[after_good], "started_at") >= at(rows[good], "completed_at")
    assert rows[after_bad]["status"] == "cancelled"
    assert rows[after_bad]["error"] == f"cancelled: dependency {bad} failed"


def test_cancelling_a_dependency_or_a_waiting_job(cli, start_worker) -> None:
    start_worker(wait=False)
    slow = submit(cli, "slow", "-t", "sleep", "-a", "seconds=30")
    waiter = submit(cli, "waiter", "-t", "noop", "--after", str(slow))
    wait_for(lambda: show(cli, slow)["status"] == "processing", 30, 0.2)
    assert cli("cancel", str(slow)).exit_code == 0
    row = wait_for(lambda: (r := show(cli, waiter))["status"] == "cancelled" and r, 10, 0.1)
    assert row["error"] == f"cancelled: dependency {slow} cancelled"

    # Long enough that the dependent is surely still waiting when it is cancelled, even on a busy machine.
    quick = submit(cli, "quick", "-t", "sleep", "-a", "seconds=3")
    dropped = submit(cli, "dropped", "-t", "noop", "--after", str(quick))
    out = cli("cancel", str(dropped))
    assert out.exit_code == 0 and f"cancelled job {dropped} (was pending)" in out.stderr
    assert ended(cli, quick)[quick]["status"] == "completed"
    kept = show(cli, dropped)
    assert kept["status"] == "cancelled" and kept["started_at"] is None and kept["blocked"] is False


def test_unknown_dependencies_are_refused_before_anything_is_stored(cli) -> None:
    out = cli("submit", "orphan", "-t", "noop", "--after", "4242")
    assert out.exit_code == 3
    assert out.stderr == "Error: job 4242 not found (given to --after)\n"
    out = cli("submit", "orphan", "-t", "noop", "--after-any", "0")
    assert out.exit_code == 3
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_dependency_ended_by_any_path_releases_its_dependents(cli) -> None:
    """The workers' ticker sweeps for waits whose dependency ended without resolving them (here a row
    failed directly, as reconciliation does for a lost worker); the reconciler never queues a
    waiting job on its own."""
    from jobctl import queue, reconcile, store
    from jobctl.ticker import Ticker

    parked = submit(cli, "parked", "-t", "noop", "--in", "1h")
    needs = submit(cli, "needs", "-t", "noop", "--after", str(parked))
    anyway = submit(cli, "anyway", "-t", "noop", "--after-any", str(parked))
    assert reconcile.run_pass().requeued == []
    assert store.fail_unqueued([parked], "worker lost") == 1
    ticker = Ticker(worker=None)
    ticker.next_sweep = 0
    ticker.tick()
    rows = {i: show(cli, i) for i in (needs, anyway)}
    assert rows[needs]["status"] == "cancelled" and rows[needs]["error"].endswith(f"{parked} failed")
    assert rows[anyway]["status"] == "pending" and rows[anyway]["blocked"] is False
    assert f"jobctl-{anyway}-1" in queue.waiting("default").queued
