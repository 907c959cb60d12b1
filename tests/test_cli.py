"""Commands as a user types them: output streams, exit codes, one-line errors, stored values."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for


def rows(cli) -> list[dict]:
    out = cli("list", "--json", "--limit", "1000")
    assert out.exit_code == 0, out
    return json.loads(out.stdout)


def test_submit_prints_id_on_stdout_and_stores_a_pending_row(cli):
    out = cli("submit", "first", "-d", "a description", "-q", "emails", "--timeout", "60", "--retries", "1")
    assert out.exit_code == 0 and out.stdout == "1\n" and out.stderr == ""
    (job,) = rows(cli)
    assert job["status"] == "pending" and job["task"] == "process" and job["queue"] == "emails"
    assert job["description"] == "a description" and job["timeout"] == 60 and job["retries"] == 1
    assert job["args"] == {} and job["attempts"] == 0 and job["task_id"] == "jobctl-1-1"


def test_submit_json_prints_the_job_object(cli):
    out = cli("submit", "j", "-t", "sleep", "-a", "seconds=0.5", "--json")
    job = json.loads(out.stdout)
    assert job["id"] == 1 and job["args"] == {"seconds": 0.5} and job["status"] == "pending"
    assert job["created_at"].endswith("+00:00")


def test_arguments_are_json_when_they_parse_else_strings(cli):
    out = cli("submit", "types", "-t", "tests.sample_tasks.echo", "-a", "text=[1, 2]", "-a", "times=2")
    assert out.exit_code == 2 and "argument 'text'" in out.stderr  # a list is not a str
    out = cli("submit", "types", "-t", "tests.sample_tasks.echo", "-a", "text=hello world", "-a", "times=3")
    assert out.exit_code == 0, out
    assert rows(cli)[0]["args"] == {"text": "hello world", "times": 3}
    out = cli("submit", "types", "-t", "tests.sample_tasks.echo", "-a", 'text="42"')
    assert out.exit_code == 0 and rows(cli)[0]["args"] == {"text": "42"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "-t", "nope"], "Error: unknown task 'nope'"),
        (["x", "-a", "steps=many"], "Error: argument 'steps' of task 'process'"),
        (["x", "-a", "steps=-1"], "Error: argument 'steps' of task 'process'"),
        (["x", "-a", "bogus=1"], "Error: task 'process' has no argument 'bogus'"),
        (["x", "-a", "novalue"], "Error: argument 'novalue' is not KEY=VALUE"),
        (["x", "-a", "=3"], "Error: argument '=3' is not KEY=VALUE"),
        (
            ["x", "-t", "tests.sample_tasks.echo"],
            "Error: task 'tests.sample_tasks.echo' needs argument 'text'",
        ),
        (["", "-t", "noop"], "Error: the job name must not be empty"),
        (["x", "--timeout", "0"], "Error: timeout must be between"),
        (["x", "--retries", "-1"], "Error: retries must be between 0 and 100"),
        (["x", "--timeout", "soon"], "Error: invalid timeout 'soon'"),
        ([], "Error: missing NAME"),
    ],
)
def test_bad_submissions_are_usage_errors_and_store_nothing(cli, args, message):
    out = cli("submit", *args)
    assert out.exit_code == 2, out
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert cli("list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "42"], 3, "Error: job 42 not found"),
        (["show", "0"], 3, "Error: job 0 not found"),
        (["show", "99999999999999999999999999"], 3, "Error: job 99999999999999999999999999 not found"),
        (["show", "abc"], 2, "Error: Invalid value for 'ID'"),
        (["cancel", "7"], 3, "Error: job 7 not found"),
        (["retry", "7"], 3, "Error: job 7 not found"),
        (["list", "--limit", "0"], 2, "Error: --limit must be between 1 and 1000, got 0"),
        (["list", "--limit", "1001"], 2, "Error: --limit must be between 1 and 1000, got 1001"),
        (["list", "--offset", "-1"], 2, "Error: --offset must be 0 or more"),
        (["list", "--offset", "10001"], 2, "Error: --offset must be at most 10000, got 10001 (to page"),
        (["list", "--before", "0"], 2, "Error: --before must be a job id (1 or more), got 0"),
        (["list", "-s", "done"], 2, "Error: unknown status 'done'"),
        (["frobnicate"], 2, "Error: No such command 'frobnicate'"),
    ],
)
def test_errors_are_one_line_with_the_spec_exit_code(cli, args, code, message):
    out = cli(*args)
    assert out.exit_code == code, out
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr


def test_names_and_descriptions_are_shown_literally(cli):
    name = "[bold red]x[/] :smile: [i]y[/i]"
    job_id = cli("submit", name, "-d", "[i]desc[/i]", "-t", "noop").stdout.strip()
    listing = cli("list").stdout
    assert name in listing
    detail = cli("show", job_id).stdout
    assert name in detail and "[i]desc[/i]" in detail
    assert rows(cli)[0]["name"] == name


def test_control_characters_and_long_names_are_stored_exactly(cli):
    name = "tab\there\nnew line \x1b[31mred" + "é" * 3000
    out = cli("submit", name, "-t", "noop")
    assert out.exit_code == 0, out
    assert rows(cli)[0]["name"] == name
    listing = cli("list").stdout
    assert "\x1b[31m" not in listing and len(listing.splitlines()) == 2  # one row, one line


def test_list_filters_and_pages_newest_first(cli):
    for i in range(5):
        cli("submit", f"n{i}", "-t", "noop", "-q", "a" if i % 2 else "b")
    cli("submit", "s", "-t", "sleep", "-a", "seconds=1")
    assert [j["id"] for j in rows(cli)] == [6, 5, 4, 3, 2, 1]
    page = json.loads(cli("list", "--json", "--limit", "2", "--offset", "1").stdout)
    assert [j["id"] for j in page] == [5, 4]
    assert [j["id"] for j in json.loads(cli("list", "--json", "-q", "a").stdout)] == [4, 2]
    assert [j["id"] for j in json.loads(cli("list", "--json", "-t", "sleep").stdout)] == [6]
    cli("cancel", "1", "3")
    cancelled = json.loads(cli("list", "--json", "-s", "cancelled", "-s", "completed").stdout)
    assert [j["id"] for j in cancelled] == [3, 1]
    assert json.loads(cli("list", "--json", "-s", "PENDING").stdout)[0]["status"] == "pending"


def test_list_pages_back_from_an_id_at_any_depth(cli):
    for i in range(6):
        cli("submit", f"n{i}", "-t", "noop", "-q", "a" if i % 2 else "b")

    def ids(*args: str) -> list[int]:
        return [j["id"] for j in json.loads(cli("list", "--json", *args).stdout)]

    assert ids("--limit", "2", "--before", "5") == [4, 3]
    assert ids("-q", "a", "--before", "4") == [2]
    assert ids("-s", "pending", "-s", "cancelled", "--before", "3") == [2, 1]
    assert cli("list", "--before", "1").stderr == "No jobs.\n"
    assert cli("list", "--offset", "10000").exit_code == 0


def test_empty_list_says_so_on_stderr(cli):
    out = cli("list")
    assert out.exit_code == 0 and out.stdout == "" and "No jobs" in out.stderr
    assert cli("list", "--json").stdout.strip() == "[]"


def test_bulk_submit_from_file_and_stdin(cli, tmp_path):
    lines = [json.dumps({"name": f"bulk {i}", "task": "noop"}) for i in range(250)]
    lines.insert(3, "")
    lines.append(
        json.dumps(
            {
                "name": "with args",
                "task": "sleep",
                "args": {"seconds": 2},
                "queue": "slow",
                "description": "d",
                "retries": 1,
            }
        )
    )
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = cli("submit", "--from", str(path))
    assert out.exit_code == 0, out
    ids = [int(x) for x in out.stdout.split()]
    assert ids == list(range(1, 252))
    last = json.loads(cli("show", "251", "--json").stdout)
    assert last["queue"] == "slow" and last["args"] == {"seconds": 2} and last["retries"] == 1
    out = cli("submit", "--from", "-", "--json", input=json.dumps({"name": "piped", "task": "noop"}) + "\n")
    assert json.loads(out.stdout)[0]["name"] == "piped"
    from jobctl import queue

    assert queue.get_redis().llen("rq:queue:default") == 251
    assert queue.get_redis().llen("rq:queue:slow") == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "Error: line 2: not valid JSON"),
        ('["a"]', "Error: line 2: expected a JSON object"),
        ('{"task": "noop"}', 'Error: line 2: missing "name"'),
        ('{"name": "x", "task": "nope"}', "Error: line 2: unknown task 'nope'"),
        ('{"name": "x", "args": {"steps": "x"}}', "Error: line 2: argument 'steps'"),
        ('{"name": "x", "colour": "red"}', "Error: line 2: unknown field 'colour'"),
        ('{"name": 5}', "Error: line 2: 'name' must be a string"),
    ],
)
def test_bulk_submit_is_validated_as_a_whole(cli, line, message):
    text = json.dumps({"name": "good", "task": "noop"}) + "\n" + line + "\n"
    out = cli("submit", "--from", "-", input=text)
    assert out.exit_code == 2 and out.stderr.startswith(message), out
    assert cli("list", "--json").stdout.strip() == "[]"


def test_bulk_submit_missing_file(cli, tmp_path):
    out = cli("submit", "--from", str(tmp_path / "nope.jsonl"))
    assert out.exit_code == 2 and out.stderr.startswith("Error: cannot read")


def test_redis_unreachable_fails_submit_with_exit_4_and_no_stranded_row(run, cli):
    out = run("submit", "lost", "-t", "noop", REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert out.returncode == 4
    assert out.stderr.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:1/0 (")
    assert out.stderr.count("\n") == 1 and "hunter2" not in out.stderr and "Traceback" not in out.stderr
    (job,) = rows(cli)
    assert (
        job["status"] == "failed" and "could not be queued" in job["error"] and "hunter2" not in job["error"]
    )


def test_database_unreachable_is_exit_4_with_masked_password(run):
    out = run("list", DATABASE_URL="postgresql://jobctl:s3cret@127.0.0.1:1/jobctl")
    assert out.returncode == 4
    assert out.stderr.startswith("Error: cannot reach the database at ")
    assert "jobctl:***@127.0.0.1:1" in out.stderr and "s3cret" not in out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DATABASE_URL", "notaurl", "Error: malformed database URL"),
        ("DATABASE_URL", "mysql://u:pw@h/db", "Error: malformed database URL"),
        ("REDIS_URL", "http://127.0.0.1:6379", "Error: malformed Redis URL"),
    ],
)
def test_malformed_urls_are_exit_4(run, var, value, message):
    out = run("submit", "x", "-t", "noop", **{var: value})
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1 and "pw@" not in out.stderr


def test_config_masks_secrets_and_names_modes(run):
    out = run(
        "config",
        REDIS_URL="redis://:topsecret@example.invalid:6380/2",
        DATABASE_URL="postgresql://u:alsosecret@db.invalid/x",
    )
    assert out.returncode == 0, out.stderr
    assert "topsecret" not in out.stdout and "alsosecret" not in out.stdout
    assert "redis://:***@example.invalid:6380/2" in out.stdout
    assert "server" in out.stdout and "JOBCTL_JOB_TIMEOUT" in out.stdout and "1800" in out.stdout


def test_config_lists_liveness_and_dashboard_settings(run):
    out = run(
        "config",
        JOBCTL_LOST_AFTER="12.5",
        JOBCTL_DASHBOARD_USERNAME="ops",
        JOBCTL_DASHBOARD_PASSWORD="dash-secret",
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "12.5 s" in lines["JOBCTL_LOST_AFTER"]
    assert "ops" in lines["JOBCTL_DASHBOARD_USERNAME"]
    assert "***" in lines["JOBCTL_DASHBOARD_PASSWORD"] and "dash-secret" not in out.stdout


def test_config_assembles_seed_variables(run):
    out = run(
        "config",
        POSTGRES_SERVER="db.example",
        POSTGRES_USER="app",
        POSTGRES_PASSWORD="pw!@",
        POSTGRES_DB="jobs",
        REDIS_HOST="cache.example",
        REDIS_PORT="6390",
        REDIS_DB="3",
        REDIS_PASSWORD="rpw",
        REDIS_SSL="true",
        DATABASE_URL="",
        REDIS_URL="",
    )
    assert out.returncode == 0, out.stderr
    assert "postgresql+psycopg2://app:***@db.example:5432/jobs" in out.stdout
    assert "rediss://:***@cache.example:6390/3" in out.stdout
    assert "pw!@" not in out.stdout and "rpw" not in out.stdout


def test_tasks_lists_parameters_and_docstrings(cli):
    out = cli("tasks")
    assert out.exit_code == 0
    assert "process" in out.stdout and "steps: int = 10" in out.stdout
    assert "tests.sample_tasks.echo" in out.stdout and "text: str" in out.stdout
    assert "Return `text` repeated." in out.stdout


@pytest.mark.parametrize(
    ("var", "value"), [("JOBCTL_JOB_TIMEOUT", "soon"), ("JOBCTL_RESULT_TTL", "-5"), ("REDIS_PORT", "x")]
)
def test_invalid_settings_are_one_line_errors(run, var, value):
    out = run("list", **{var: value})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"Error: invalid setting {var}") and out.stderr.count("\n") == 1


def test_unimportable_task_module_is_a_usage_error(run):
    out = run("submit", "x", JOBCTL_TASKS="no_such_module_here")
    assert out.returncode == 2
    assert out.stderr.startswith("Error: cannot import task module 'no_such_module_here'")


def test_health_passes_with_a_worker_and_fails_without(cli, start_worker):
    out = cli("health", "--timeout", "2")
    assert out.exit_code == 1 and "no worker is running" in out.stdout
    start_worker()
    out = cli("health", "--timeout", "20")
    assert out.exit_code == 0, out
    for check in ("database", "redis", "worker"):
        assert check in out.stdout
    assert "FAIL" not in out.stdout


def test_health_reports_unreachable_redis(run):
    out = run("health", REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 4 and "FAIL" in out.stdout and "Traceback" not in out.stderr


def test_workers_lists_running_workers(cli, start_worker):
    assert "No workers are running" in cli("workers").stderr
    worker = start_worker("-q", "alpha", "-q", "beta")
    out = cli("workers")
    assert out.exit_code == 0 and "alpha,beta" in out.stdout and str(worker.pid) in out.stdout
    wait_for(lambda: "idle" in cli("workers").stdout)


def test_every_command_has_help(run):
    for command in (
        "submit",
        "list",
        "show",
        "cancel",
        "retry",
        "worker",
        "workers",
        "health",
        "tasks",
        "config",
        "db",
        "db upgrade",
    ):
        out = run(*command.split(), "--help")
        assert out.returncode == 0 and "Usage" in out.stdout, command
