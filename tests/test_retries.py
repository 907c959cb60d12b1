"""Retries with backoff and time limits: delay specs, `--retry-on`, each attempt's error kept and shown,
`jobctl retry`, the hard timeout (the process is killed) and the soft timeout (SoftTimeout in the task)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobctl.backoff import (
    delay_for,
    describe_delay,
    exception_matches,
    parse_retry_delay,
    parse_retry_on,
    plan_retry,
    with_error,
)
from jobctl.errors import UsageError
from jobctl.models import Job
from jobctl.timeouts import effective_soft
from tests.conftest import show, submit, wait_for

TERMINAL = ("completed", "failed", "cancelled")


def ended(cli, job_id: int, timeout: float = 40) -> dict:
    return wait_for(lambda: (row := show(cli, job_id))["status"] in TERMINAL and row, timeout, 0.2)


# ---------------------------------------------------------------- the policy (no backends)


def test_retry_delay_specs() -> None:
    assert parse_retry_delay(None) is None
    assert parse_retry_delay("30") == {"kind": "fixed", "seconds": 30.0}
    assert parse_retry_delay("1m") == {"kind": "fixed", "seconds": 60.0}
    assert parse_retry_delay("10,30s,1m") == {"kind": "list", "seconds": [10.0, 30.0, 60.0]}
    assert parse_retry_delay("exp") == {"kind": "exponential", "base": 1.0, "cap": 3600.0, "jitter": True}
    assert parse_retry_delay("exp:5:5m") == {"kind": "exponential", "base": 5.0, "cap": 300.0, "jitter": True}
    for bad in ("", "soon", "10,,30", "exp:0", "exp:10:5", "exp:1:2:3", "fixed:5", "8d"):
        with pytest.raises(UsageError, match="--retry-delay"):
            parse_retry_delay(bad)


def test_delays_per_attempt() -> None:
    assert delay_for(None, 3) == 0
    assert delay_for({"kind": "fixed", "seconds": 7.0}, 5) == 7
    listed = {"kind": "list", "seconds": [10.0, 30.0, 60.0]}
    assert [delay_for(listed, n) for n in (1, 2, 3, 4, 9)] == [10, 30, 60, 60, 60]  # the last repeats
    exp = {"kind": "exponential", "base": 2.0, "cap": 20.0, "jitter": True}
    assert [delay_for(exp, n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 40)] == [2, 4, 8, 16, 20, 20]
    assert [delay_for(exp, n, rand=lambda: 0.0) for n in (1, 4, 5)] == [1, 8, 10]  # jitter: half to all
    assert describe_delay(exp) == "exponential from 2s, capped at 20s, with jitter"
    assert describe_delay(listed) == "10s, 30s, 60s (the last repeats)"


def test_retry_on_matches_exception_types_by_name() -> None:
    from rq.timeouts import JobTimeoutException

    assert parse_retry_on(["ConnectionError,TimeoutError", "ConnectionError"]) == [
        "ConnectionError",
        "TimeoutError",
    ]
    assert parse_retry_on([]) is None
    with pytest.raises(UsageError, match="--retry-on"):
        parse_retry_on(["not a name"])
    assert exception_matches(ConnectionRefusedError(), ["ConnectionError"])  # subclasses match
    assert exception_matches(KeyError(), ["builtins.LookupError"])  # dotted names too
    assert not exception_matches(ValueError(), ["ConnectionError"])
    assert exception_matches(JobTimeoutException(), ["TimeoutError"])  # a hard timeout is a TimeoutError


def test_plan_retry() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(name="j", task="t", queue="q", retries=2, retry_delay={"kind": "fixed", "seconds": 5.0})
    assert plan_retry(job, 1, ValueError(), now=now).due == now + timedelta(seconds=5)
    assert plan_retry(job, 3, ValueError(), now=now) is None  # out of retries
    job.retry_delay = None
    assert plan_retry(job, 1, now=now).due is None  # at once
    job.retry_on = ["ConnectionError"]
    assert plan_retry(job, 1, ValueError(), now=now) is None
    assert plan_retry(job, 1, ConnectionResetError(), now=now) is not None
    assert plan_retry(job, 1, None, now=now) is None  # a lost worker is no listed exception


def test_attempt_errors_keep_one_entry_per_attempt() -> None:
    errors = with_error(None, 1, "ValueError: a")
    errors = with_error(errors, 2, "ValueError: b")
    errors = with_error(errors, 1, "ValueError: a again")
    assert [(e["attempt"], e["error"]) for e in errors] == [(1, "ValueError: a again"), (2, "ValueError: b")]
    assert len(with_error(None, 1, "x" * 10_000)[0]["error"]) < 5000


def test_soft_limit_applies_only_below_the_hard_one() -> None:
    assert effective_soft(None, 1500, 1800) == 1500
    assert effective_soft(None, 1500, 60) is None
    assert effective_soft(5, 1500, 60) == 5
    assert effective_soft(None, 0, 1800) is None


def test_bad_retry_and_timeout_options_are_usage_errors(cli) -> None:
    for args, message in [
        (("--retry-delay", "10"), "--retry-delay needs --retries"),
        (("--retries", "2", "--retry-delay", "often"), "invalid --retry-delay"),
        (("--retry-on", "ValueError"), "--retry-on needs --retries"),
        (("--retries", "1", "--retry-on", "2bad"), "invalid --retry-on"),
        (("--timeout", "5", "--soft-timeout", "10"), "(10 s) must be below the hard timeout (5 s)"),
        (("--soft-timeout", "0"), "soft timeout must be between"),
    ]:
        out = cli("submit", "x", "-t", "noop", *args)
        assert out.exit_code == 2, (args, out)
        assert out.stderr.startswith("Error: ") and message in out.stderr, out.stderr


# ---------------------------------------------------------------- on real workers


def test_retries_wait_their_backoff_and_keep_each_attempts_error(cli, start_worker, tmp_path) -> None:
    start_worker(wait=False)
    flaky = submit(
        cli,
        "flaky",
        "-t",
        "flaky",
        "-a",
        f"path={tmp_path / 'a'}",
        "-a",
        "failures=2",
        "--retries",
        "3",
        "--retry-delay",
        "1,2",
        "--retry-on",
        "ConnectionError",
    )
    expo = submit(
        cli,
        "expo",
        "-t",
        "flaky",
        "-a",
        f"path={tmp_path / 'b'}",
        "-a",
        "failures=1",
        "--retries",
        "1",
        "--retry-delay",
        "exp:1:1",
    )
    wrong = submit(
        cli,
        "wrong",
        "-t",
        "flaky",
        "-a",
        f"path={tmp_path / 'c'}",
        "-a",
        "error=ValueError",
        "--retries",
        "3",
        "--retry-on",
        "ConnectionError",
    )

    waiting = wait_for(lambda: (r := show(cli, flaky))["attempts"] and r["status"] == "pending" and r, 30)
    assert when(waiting["scheduled_for"]) > when(waiting["updated_at"])  # the next attempt waits
    assert "retry 2 in" in cli("list").stdout

    done = ended(cli, flaky)
    assert done["status"] == "completed" and done["attempts"] == 3 and done["result"] == 3
    assert done["error"] is None
    assert [(e["attempt"], e["error"].splitlines()[0]) for e in done["attempt_errors"]] == [
        (1, "ConnectionError: failure 1"),
        (2, "ConnectionError: failure 2"),
    ]
    text = cli("show", str(flaky)).stdout
    assert "attempt 1" in text and "ConnectionError: failure 2" in text and "1s, 2s" in text
    assert ended(cli, expo)["status"] == "completed"

    failed = ended(cli, wrong)  # ValueError is not retried under --retry-on ConnectionError
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"].startswith("ValueError: failure 1")
    assert [e["attempt"] for e in failed["attempt_errors"]] == [1]

    out = cli("retry", str(wrong))  # by hand, whatever --retry-on says; the earlier error stays
    assert out.exit_code == 0 and "attempt 2" in out.stderr, out
    again = ended(cli, wrong)
    assert again["status"] == "completed" and again["attempts"] == 2
    assert [e["attempt"] for e in again["attempt_errors"]] == [1]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_hard_and_soft_time_limits(cli, start_worker) -> None:
    worker = start_worker(wait=False)
    hard = submit(cli, "hard", "-t", "sleep", "-a", "seconds=30", "--timeout", "1")
    swallowed = submit(cli, "swallowed", "-t", "swallow", "-a", "seconds=30", "--timeout", "1")
    limits = ("-a", "seconds=30", "--timeout", "20")
    soft = submit(cli, "soft", "-t", "soft_aware", "--soft-timeout", "1", *limits)
    unhandled = submit(cli, "unhandled", "-t", "sleep", "--soft-timeout", "1s", *limits)
    after = submit(cli, "after", "-t", "noop")

    row = ended(cli, hard)
    assert row["status"] == "failed" and row["error"] == "timed out after 1 s (hard time limit)"
    row = ended(cli, swallowed)  # it caught RQ's timeout exception: its process was killed
    assert row["status"] == "failed" and row["error"].startswith("timed out after 1 s")
    row = ended(cli, soft)
    assert row["status"] == "completed" and row["result"] == "cleaned up" and row["soft_timeout"] == 1
    row = ended(cli, unhandled)
    assert row["status"] == "failed"
    assert row["error"].startswith("SoftTimeout: soft time limit of 1 s exceeded")
    assert ended(cli, after)["status"] == "completed"  # the worker carried on
    assert worker.proc.poll() is None
