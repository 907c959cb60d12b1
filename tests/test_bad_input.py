"""Hostile input: every bad command line gets one `Error:` line and the SPEC's exit code, never a
traceback; every accepted value is stored and shown byte for byte. Property tests cover argument
parsing and the job state machine."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.conftest import reset_caches

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
HUGE = "9" * 40
NAME_10K = "n" * 10_000


def assert_clean_error(out, code: int) -> None:
    """One `Error:` line on stderr, nothing on stdout, no traceback, the expected exit code."""
    assert out.exit_code == code, out
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out
    assert "Traceback" not in out.stderr + out.stdout and out.stdout == "", out


def rows(cli) -> list[dict]:
    out = cli("list", "--json", "--limit", "1000")
    assert out.exit_code == 0, out
    return json.loads(out.stdout)


BATTERY = [
    # ids: negative, zero, huge, not numbers
    (["show", "--", "-1"], 3),
    (["show", "-1"], 2),  # looks like an option
    (["show", "0"], 3),
    (["show", HUGE], 3),
    (["show", str(2**63)], 3),
    (["show", "abc"], 2),
    (["show", "1.5"], 2),
    (["show", ""], 2),
    (["show", "0x10"], 2),
    (["cancel", "--", "-7"], 3),
    (["cancel", HUGE], 3),
    (["cancel", "one"], 2),
    (["retry", "--", "-3"], 3),
    (["retry", "0"], 3),
    (["retry", "nan"], 2),
    # limits out of range
    (["list", "--limit", "0"], 2),
    (["list", "--limit", "-5"], 2),
    (["list", "--limit", "1001"], 2),
    (["list", "--limit", HUGE], 2),
    (["list", "--limit", "ten"], 2),
    (["list", "--offset", "-1"], 2),
    (["list", "--offset", HUGE], 2),
    # unknown statuses and tasks
    (["list", "-s", "done"], 2),
    (["list", "-s", ""], 2),
    (["list", "-s", "pending;drop table job"], 2),
    (["submit", "x", "-t", "nope"], 2),
    (["submit", "x", "-t", ""], 2),
    (["submit", "x", "-t", "os.system"], 2),
    # malformed -a
    (["submit", "x", "-a", "novalue"], 2),
    (["submit", "x", "-a", "=1"], 2),
    (["submit", "x", "-a", "two words=1"], 2),
    (["submit", "x", "-a", "1st=1"], 2),
    (["submit", "x", "-a", "steps=NaN"], 2),
    (["submit", "x", "-a", "steps=1e999"], 2),
    (["submit", "x", "-a", f"steps={HUGE}"], 2),
    (["submit", "x", "-a", "steps=[1,"], 2),
    (["submit", "x", "-a", "min_delay=-1"], 2),
    (["submit", "x", "-a", "bogus=1"], 2),
    # names and other options
    (["submit", ""], 2),
    (["submit", "   "], 2),
    (["submit", "n" * 10_001], 2),
    (["submit", "nul\x00byte"], 2),
    (["submit", "x", "--timeout", "0"], 2),
    (["submit", "x", "--timeout", "-1"], 2),
    (["submit", "x", "--timeout", HUGE], 2),
    (["submit", "x", "--retries", "-1"], 2),
    (["submit", "x", "--retries", "101"], 2),
    (["submit", "x", "-q", "two words"], 2),
    (["frobnicate"], 2),
    (["list", "--no-such-option"], 2),
]


@SQLITE_ONLY
def test_hostile_command_lines_fail_cleanly_and_store_nothing(cli):
    for args, code in BATTERY:
        assert_clean_error(cli(*args), code)
    assert rows(cli) == []


FROM_LINES = [
    "not json",
    "[1, 2]",
    '"just a string"',
    "{}",
    '{"name": 7}',
    '{"name": "x", "args": [1]}',
    '{"name": "x", "args": {"steps": "many"}}',
    '{"name": "x", "task": "nope"}',
    '{"name": "x", "timeout": "soon"}',
    '{"name": "x", "retries": true}',
    '{"name": "x", "frobnicate": 1}',
    '{"name": "x"} trailing',
    '{"name": ""}',
    '{"name": "x", "args": {"steps": NaN}}',
]


@SQLITE_ONLY
def test_malformed_job_lines_are_refused_as_a_whole(cli, tmp_path):
    path = tmp_path / "jobs.jsonl"
    for line in FROM_LINES:
        path.write_text('{"name": "fine", "task": "noop"}\n' + line + "\n")
        out = cli("submit", "--from", str(path))
        assert_clean_error(out, 2)
        assert "line 2" in out.stderr, out
    assert rows(cli) == []


@SQLITE_ONLY
def test_unreadable_job_files_are_usage_errors(cli, tmp_path):
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for source in (str(tmp_path / "missing.jsonl"), str(binary), str(tmp_path)):
        assert_clean_error(cli("submit", "--from", source), 2)
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    assert_clean_error(cli("submit", "--from", str(empty)), 2)


BAD_URLS = [
    ("REDIS_URL", "not a url"),
    ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "redis://[::1"),
    ("REDIS_URL", "redis://127.0.0.1:1/0"),
    ("REDIS_URL", "unix:///nonexistent/redis.sock"),
    ("DATABASE_URL", "nope"),
    ("DATABASE_URL", "postgresql://"),
    ("DATABASE_URL", "postgresql://u:secret@127.0.0.1:1/x"),
    ("DATABASE_URL", "mysql://u:secret@127.0.0.1/x"),
    ("DATABASE_URL", "sqlite:////proc/forbidden/jobctl.db"),
]


@SQLITE_ONLY
def test_unreachable_and_malformed_urls_are_backend_errors(cli, monkeypatch):
    for variable, value in BAD_URLS:
        with monkeypatch.context() as patch:
            patch.setenv(variable, value)
            reset_caches()
            commands = [["submit", "x", "-t", "noop"]] + ([["list"]] if variable == "DATABASE_URL" else [])
            for args in commands:  # (listing asks Redis only about running jobs)
                out = cli(*args)
                assert_clean_error(out, 4)
                assert "secret" not in out.stderr
        reset_caches()


WEIRD_NAMES = [
    NAME_10K,
    "é" * 10_000,
    "tab\there, bell\a, escape \x1b[31mred\x1b[0m, backspace\b, del\x7f, \x01\x02\x1f",
    "line one\nline two\r\nline three\rcarriage",
    "[bold red]not bold[/] [link=http://example.com]x[/link] [/] [[double]] :smile: \\[escaped]",
    "‮right-to-left override‬ and zero\u200bwidth and emoji 👩‍👩‍👧",
    "ends with dash -",
    "'; DROP TABLE job; --",
    "%s %d {0} {name} $HOME `id`",
]


@SQLITE_ONLY
def test_weird_names_and_descriptions_are_stored_and_shown_exactly(cli):
    for name in WEIRD_NAMES:
        out = cli("submit", name, "--json", "-t", "noop", "-d", name[::-1])
        assert out.exit_code == 0, out
        stored = json.loads(out.stdout)
        shown = json.loads(cli("show", "--json", str(stored["id"])).stdout)
        for job in (stored, shown):
            assert job["name"] == name and job["description"] == name[::-1]
        human = cli("show", str(stored["id"]))
        assert human.exit_code == 0 and "Traceback" not in human.stderr
        listing = cli("list")
        assert listing.exit_code == 0 and "Traceback" not in listing.stderr
    assert [r["name"] for r in rows(cli)] == WEIRD_NAMES[::-1]


@SQLITE_ONLY
def test_the_real_entry_point_never_prints_a_traceback(run):
    for args, code in [
        (["show", "abc"], 2),
        (["show", HUGE], 3),
        (["list", "-s", "done"], 2),
        (["submit", "x", "-a", "steps=NaN"], 2),
    ]:
        out = run(*args)
        assert out.returncode == code and out.stderr.startswith("Error: "), out
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


# ---------------------------------------------------------------- properties: argument parsing


KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(database=None)
@given(key=KEYS, value=JSON_VALUES)
def test_json_values_round_trip_through_assignments(key, value):
    from jobctl.service import parse_assignment

    assert parse_assignment(f"{key}={json.dumps(value)}") == (key, value)


@settings(database=None)
@given(key=KEYS, raw=st.text())
def test_values_that_are_not_json_are_kept_exactly_as_typed(key, raw):
    from jobctl.service import parse_assignment

    try:
        json.loads(raw)
    except ValueError:
        assert parse_assignment(f"{key}={raw}") == (key, raw)


@settings(database=None)
@given(text=st.text())
def test_any_assignment_text_either_parses_or_is_a_usage_error(text):
    from jobctl.errors import UsageError
    from jobctl.service import parse_assignment

    try:
        key, _ = parse_assignment(text)
    except UsageError as exc:
        assert str(exc)
    else:
        assert key.isidentifier() and text.strip().startswith(key)


@SQLITE_ONLY
@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300
    ).filter(lambda s: s.strip() and not s.startswith("-")),  # a leading dash reads as an option
    steps=st.integers(min_value=-(10**20), max_value=10**20),
)
def test_any_name_is_stored_exactly_and_any_steps_value_is_accepted_or_refused(cli, name, steps):
    out = cli("submit", name, "--json", "-a", f"steps={steps}")
    if 0 <= steps <= 1_000_000:
        assert out.exit_code == 0, out
        job = json.loads(cli("show", "--json", str(json.loads(out.stdout)["id"])).stdout)
        assert job["name"] == name and job["args"] == {"steps": steps}
    else:
        assert_clean_error(out, 2)


# ---------------------------------------------------------------- properties: the job state machine


class JobStateMachine(RuleBasedStateMachine):
    """Random sequences of what workers, reconcilers, cancels and retries do to one row, against a model.

    Whatever the order, and however late an old attempt writes: terminal states only change through
    `retry`, attempts never go back, and a write for any attempt but the current one changes nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.job_id = 0
        self.status = "pending"
        self.attempts = 0
        self.result: object = None

    @initialize()
    def new_row(self) -> None:
        from jobctl import queue, store

        (job,) = store.insert_jobs(
            [{"name": "model", "task": "noop", "args": {}, "queue": "default"}],
            lambda i: queue.rq_job_id(i, 1),
        )
        assert job.id is not None
        self.job_id = job.id

    def row(self):  # type: ignore[no-untyped-def]
        from jobctl import store

        return store.get_job(self.job_id)

    @rule(attempt=st.integers(1, 4))
    def claim(self, attempt: int) -> None:
        from jobctl import lifecycle

        claimed = lifecycle.claim(self.job_id, attempt, f"w{attempt}") is not None
        expected = self.status == "pending" and self.attempts == attempt - 1
        assert claimed == expected
        if claimed:
            self.status, self.attempts = "processing", attempt

    @rule(attempt=st.integers(1, 4), outcome=st.sampled_from(["completed", "failed"]), value=st.integers())
    def finish(self, attempt: int, outcome: str, value: int) -> None:
        from jobctl import lifecycle
        from jobctl.models import JobStatus

        done = lifecycle.finish(self.job_id, attempt, JobStatus(outcome), result=value)
        expected = self.status == "processing" and self.attempts == attempt
        assert done == expected
        if done:
            self.status, self.result = outcome, value

    @rule(attempt=st.integers(1, 4))
    def requeue(self, attempt: int) -> None:
        from jobctl import lifecycle, queue

        done = lifecycle.requeue_after_failure(
            self.job_id,
            attempt,
            error="again",
            progress=None,
            task_id=queue.rq_job_id(self.job_id, attempt + 1),
        )
        assert done == (self.status == "processing" and self.attempts == attempt)
        if done:
            self.status = "pending"

    @rule()
    def cancel(self) -> None:
        from jobctl import store

        before, _ = store.cancel(self.job_id)
        assert before is not None and before.value == self.status
        if self.status in ("pending", "processing"):
            self.status = "cancelled"

    @rule()
    def retry(self) -> None:
        from jobctl import queue, store

        reopened, _ = store.reopen(self.job_id, queue.rq_job_id)
        assert reopened == (self.status in ("failed", "cancelled"))
        if reopened:
            self.status, self.result = "pending", None

    @invariant()
    def row_matches_the_model(self) -> None:
        if not self.job_id:
            return
        row = self.row()
        assert (row.status, row.attempts) == (self.status, self.attempts)
        if self.status == "completed":
            assert row.result == self.result and row.completed_at is not None


@SQLITE_ONLY
def test_the_job_state_machine_holds_under_any_order_of_writes(env):
    from hypothesis.stateful import run_state_machine_as_test

    budget = settings(max_examples=60, stateful_step_count=25, deadline=None, database=None)
    run_state_machine_as_test(JobStateMachine, settings=budget)
