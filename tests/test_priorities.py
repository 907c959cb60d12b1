"""Priorities and unique keys: workers take high, then normal, then low jobs (`--at-front` first in line),
and a unique key refuses a second active job that carries it."""

from __future__ import annotations

import json

import pytest

from jobctl.errors import UsageError
from jobctl.priority import check_priority, rq_queue_name, worker_queues
from tests.conftest import show, submit, wait_for


def test_priority_queues() -> None:
    assert worker_queues(["a", "b"]) == ["a-high", "b-high", "a", "b", "a-low", "b-low"]
    assert rq_queue_name("a", "normal") == "a" and rq_queue_name("a", "low") == "a-low"
    assert check_priority("HIGH") == "high" and check_priority(None) == "normal"
    with pytest.raises(UsageError, match="high, normal, low"):
        check_priority("urgent")


@pytest.mark.parametrize("burst", [False, True], ids=["waiting", "burst"])
def test_workers_take_high_then_normal_then_low_and_at_front_first(cli, start_worker, burst) -> None:
    """A waiting worker blocks on all its queues at once, then looks for the next job without waiting;
    a burst worker never waits: both take jobs in priority order, whichever queue they come from."""
    from jobctl import queue

    low = submit(cli, "low", "-t", "noop", "--priority", "low")
    normal = submit(cli, "normal", "-t", "noop")
    high = submit(cli, "high", "-t", "noop", "--priority", "high")
    urgent = submit(cli, "urgent", "-t", "noop", "--at-front")
    high2 = submit(cli, "high2", "-t", "noop", "--priority", "high")
    assert queue.waiting("default-high").queued == {f"jobctl-{high}-1", f"jobctl-{high2}-1"}
    assert queue.waiting("default-low").queued == {f"jobctl-{low}-1"}
    assert show(cli, high)["priority"] == "high" and show(cli, urgent)["at_front"] is True
    assert "priority" in cli("show", str(high)).stdout
    out = cli("submit", "x", "-t", "noop", "--priority", "urgent")
    assert out.exit_code == 2 and "invalid priority 'urgent'" in out.stderr

    # One worker, so the order it takes them in is the order they start in.
    worker = start_worker("--burst", wait=False) if burst else start_worker()
    ids = [low, normal, high, urgent, high2]
    rows = wait_for(
        lambda: all((r := {i: show(cli, i) for i in ids})[i]["status"] == "completed" for i in ids) and r,
        30,
        0.2,
    )
    order = sorted(ids, key=lambda i: rows[i]["started_at"])
    assert order == [high, high2, urgent, normal, low]
    if burst:
        assert worker.proc.wait(30) == 0  # every queue empty: the burst worker ends


def test_unique_keys_refuse_a_second_active_job(cli) -> None:
    first = submit(cli, "nightly", "-t", "noop", "--unique-key", "report-2026-11-30")
    out = cli("submit", "again", "-t", "noop", "--unique-key", "report-2026-11-30")
    assert out.exit_code == 1
    assert out.stderr == f"Error: job {first} with unique key 'report-2026-11-30' is already pending\n"
    other = submit(cli, "other day", "-t", "noop", "--unique-key", "report-2026-12-01")
    assert show(cli, first)["unique_key"] == "report-2026-11-30"

    lines = '{"name": "a", "unique_key": "k"}\n{"name": "b", "unique_key": "k"}\n'
    out = cli("submit", "--from", "-", "-t", "noop", input=lines)
    assert out.exit_code == 1 and "unique key 'k' is given to more than one job" in out.stderr
    out = cli("submit", "x", "-t", "noop", "--unique-key", "")
    assert out.exit_code == 2 and "invalid unique key" in out.stderr

    assert cli("cancel", str(first)).exit_code == 0  # an ended job frees its key
    second = submit(cli, "again", "-t", "noop", "--unique-key", "report-2026-11-30")
    out = cli("retry", str(first))  # the key is held again: the old job cannot come back
    assert out.exit_code == 1
    held = f"job {second} with unique key 'report-2026-11-30' is already pending"
    assert f"cannot retry job {first}: {held}" in out.stderr
    assert show(cli, first)["status"] == "cancelled"
    assert [j["id"] for j in json.loads(cli("list", "--json").stdout)] == [second, other, first]
