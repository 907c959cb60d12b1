"""Pure logic: argument parsing, validation, URL masking, formatting, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobctl.config import Settings, mask_url
from jobctl.errors import UsageError
from jobctl.service import Outcome, parse_assignment, worst_exit
from jobctl.tasks import get_task, task, validate_args


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=5", ("n", 5)),
        ("f=1.5", ("f", 1.5)),
        ("b=true", ("b", True)),
        ("x=null", ("x", None)),
        ("s=hello", ("s", "hello")),
        ("s=", ("s", "")),
        ('s="5"', ("s", "5")),
        ("l=[1,2]", ("l", [1, 2])),
        ('o={"a": 1}', ("o", {"a": 1})),
        ("eq=a=b", ("eq", "a=b")),
        ("sp=two words", ("sp", "two words")),
    ],
)
def test_assignment_values_are_json_when_they_parse(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", " =1", "bad key=1", "1x=2"])
def test_bad_assignments_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_assignment(text)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
        ("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/r.sock?db=0", "unix:///tmp/r.sock?db=0"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


def test_settings_assemble_urls_from_seed_names():
    s = Settings(
        POSTGRES_SERVER="db",
        POSTGRES_USER="u",
        POSTGRES_PASSWORD="p@ss",
        POSTGRES_DB="jobs",
        REDIS_HOST="cache",
        REDIS_PORT=6380,
        REDIS_DB=2,
        REDIS_PASSWORD="pw",
    )
    assert s.resolved_database_url() == "postgresql+psycopg2://u:p%40ss@db:5432/jobs"
    assert s.resolved_redis_url() == "redis://:pw@cache:6380/2"
    assert not s.database_is_embedded and not s.redis_is_embedded


def test_settings_default_to_embedded_backends(tmp_path):
    s = Settings(JOBCTL_DATA_DIR=tmp_path)
    assert s.database_is_embedded and s.redis_is_embedded
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / 'jobctl.db'}"
    assert s.resolved_redis_url() is None
    assert (s.job_timeout, s.result_ttl, s.worker_max_jobs) == (1800, 3600, 1000)


def test_database_url_wins_and_gets_the_shipped_driver():
    s = Settings(DATABASE_URL="postgres://u@h/db", POSTGRES_SERVER="ignored")
    assert s.resolved_database_url() == "postgresql+psycopg2://u@h/db"


@task(name="typed")
def typed(count: int, ratio: float = 0.5, label: str = "x", tags: list[str] | None = None) -> None:
    """A task with typed parameters."""


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"count": 1}, None),
        ({"count": 1, "ratio": 2}, None),  # an int is a fine float
        ({"count": 1, "tags": ["a"]}, None),
        ({}, "needs argument 'count'"),
        ({"count": "1"}, "argument 'count'"),
        ({"count": True}, "argument 'count'"),
        ({"count": 1.5}, "argument 'count'"),
        ({"count": 1, "label": 3}, "argument 'label'"),
        ({"count": 1, "tags": "a"}, "argument 'tags'"),
        ({"count": 1, "extra": 1}, "has no argument 'extra'"),
    ],
)
def test_validate_args_against_signature(args, error):
    spec = get_task("typed")
    assert spec is not None
    if error is None:
        validate_args(spec, args)
    else:
        with pytest.raises(UsageError, match=error):
            validate_args(spec, args)


def test_task_registers_under_module_name_by_default():
    @task
    def local_task(x: int) -> int:
        return x

    assert get_task(f"{__name__}.test_task_registers_under_module_name_by_default.<locals>.local_task")


def test_worst_exit_code_orders_not_found_above_refused():
    assert worst_exit([Outcome(1, True, ""), Outcome(2, False, "", 1)]) == 1
    assert worst_exit([Outcome(1, False, "", 3), Outcome(2, False, "", 1)]) == 3
    assert worst_exit([Outcome(1, False, "", 4), Outcome(2, False, "", 3)]) == 4
    assert worst_exit([]) == 0


def test_process_task_is_reproducible_with_a_seed(monkeypatch):
    import jobctl.tasks as tasks

    monkeypatch.setattr(tasks.time, "sleep", lambda s: None)
    seen = []
    monkeypatch.setattr(tasks, "_progress", lambda c, t=None, m=None: seen.append((c, t)))
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(tasks.process(steps=5, failure_rate=0.5, seed=3)["steps"])
        except RuntimeError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    with pytest.raises(RuntimeError, match="Random processing error"):
        tasks.process(steps=3, failure_rate=1, seed=1)
    assert tasks.process(steps=3, failure_rate=0)["steps"] == 3
    with pytest.raises(ValueError, match="min_delay"):
        tasks.process(steps=1, min_delay=2, max_delay=1)


def test_relative_times_and_durations():
    from jobctl.cli.render import duration, progress_text, relative

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert relative(now - timedelta(seconds=5), now) == "5.0s ago"
    assert relative(now - timedelta(minutes=3, seconds=4), now) == "3m04s ago"
    assert relative(None) == "-"
    assert duration(0.25) == "250ms" and duration(7200) == "2h00m" and duration(90000) == "1d01h"
    assert progress_text({"current": 4, "total": 10}) == "4/10"
    assert progress_text({"current": 4, "total": None}) == "4" and progress_text(None) == "-"


def test_rq_job_ids_round_trip():
    from jobctl.queue import parse_rq_job_id, rq_job_id

    assert parse_rq_job_id(rq_job_id(12, 3)) == (12, 3)
    assert parse_rq_job_id("something-else") is None
    assert parse_rq_job_id("jobctl-x-1") is None


@pytest.mark.parametrize("width", [1000, 120, 100, 80, 60])
def test_the_list_table_looks_as_rich_would_lay_it_out(width):
    """`list` writes its table itself where it fits (rich's Table is slow to lay out hundreds of
    rows): character for character and style for style what the Table shows, at any width."""
    import io

    from rich.console import Console
    from rich.text import Text

    from jobctl.cli.render import JOB_COLUMNS, NAME_WIDTH, Rows, status_text

    def styled_lines(console: Console, renderable: object) -> list[list[tuple[str, object]]]:
        lines = []
        for line in console.render_lines(renderable, pad=False):
            chars = [(ch, seg.style or None) for seg in line for ch in seg.text]
            while chars and chars[-1] == (" ", None):
                chars.pop()
            lines.append(chars)
        return lines

    names = ["short", "x" * 40, "z" * 41, "日本語の名前" * 8, "emoji 👩‍👩‍👧 name", "a日" * 30, ""]
    statuses = ["completed", "failed", "pending", "processing", "cancelled", "completed", "failed"]
    times = [Text("3/10"), Text("5m ago"), Text("1.2s")]
    rows = [
        [Text(str(977 * i)), Text(name), Text("app.task"), status_text(status, "due in 5m" * (i % 2)), *times]
        for i, (name, status) in enumerate(zip(names, statuses, strict=True))
    ]
    table = Rows(JOB_COLUMNS, rows, right=("ID", "PROGRESS"), max_widths={"NAME": NAME_WIDTH})
    table.row_styles[2] = "reverse"
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
    written = styled_lines(console, table)
    assert written == styled_lines(console, table.table())
    if width == 1000:  # the third job: its long name cut to 40 cells, the row in reverse video
        line = "".join(ch for ch, _ in written[3])
        assert line.startswith("1954  " + "z" * 39 + "…  app.task  pending  ")
        assert all(style is not None and style.reverse for _, style in written[3])
    assert len(written) == 1 + len(rows)
