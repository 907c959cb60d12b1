"""`jobctl watch`, `submit --watch` and `list --watch` as a person sees them: in a real terminal and piped."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pexpect
import pyte
import pytest

from jobctl import service, store
from tests.conftest import wait_for

CLOCK = r"\d\d:\d\d:\d\d"


def submit(name: str, task: str = "noop", **args: Any) -> int:
    (job,) = service.submit_jobs([service.JobRequest(name=name, task=task, args=args)])
    assert job.id is not None
    return job.id


class Terminal:
    """`jobctl ARGS` in a pseudo-terminal, its output fed to a terminal emulator to read the screen."""

    def __init__(self, env: dict[str, str], args: list[str], rows: int = 24, cols: int = 120) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "jobctl", *args],
            env={**env, "TERM": "xterm-256color"},
            dimensions=(rows, cols),
            timeout=60,
        )
        self.screens: list[str] = []

    def pump(self, timeout: float = 0.1) -> bool:
        """Read what the program drew; False once it has exited."""
        try:
            self.stream.feed(self.child.read_nonblocking(65536, timeout))
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        text = self.text()
        if not self.screens or self.screens[-1] != text:
            self.screens.append(text)
        return True

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, predicate: Callable[[str], Any], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.pump()
            if predicate(self.text()):
                return self.text()
            if not alive:
                break
        pytest.fail(f"the screen never showed what was expected; last screen:\n{self.text()}")

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.pump() and time.monotonic() < deadline:
            pass
        self.child.close()
        assert self.child.exitstatus is not None, f"still running; the screen:\n{self.text()}"
        return int(self.child.exitstatus)

    def line_of(self, job_id: int, text: str | None = None) -> str:
        for line in (text or self.text()).splitlines():
            if re.match(rf"^\s*{job_id}\s", line):
                return line
        return ""

    def row_index(self, job_id: int) -> int | None:
        lines = self.text().splitlines()
        return next((i for i, line in enumerate(lines) if re.match(rf"^\s*{job_id}\s", line)), None)

    def reversed_row(self, job_id: int) -> bool | None:
        """Whether the job's row is drawn in reverse video (None while it is not on the screen)."""
        row = self.row_index(job_id)
        return None if row is None else all(self.screen.buffer[row][x].reverse for x in range(10))


@pytest.fixture
def terminal(env: dict[str, str]) -> Iterator[Callable[..., Terminal]]:
    """Start `jobctl ARGS` in a pseudo-terminal; closed at the end of the test."""
    started: list[Terminal] = []

    def _start(*args: str, rows: int = 24, cols: int = 120) -> Terminal:
        term = Terminal(env, list(args), rows, cols)
        started.append(term)
        return term

    yield _start
    for term in started:
        if term.child.isalive():
            term.child.terminate(force=True)


def _assert_terminal_screens(term: Terminal, steady: int, failing: int, counting: int) -> None:
    def showed(pattern: str) -> bool:
        return any(re.search(pattern, screen) for screen in term.screens)

    # While running: a bar, current/total, a percentage, elapsed, an ETA and the message.
    assert showed(r"\[bold\]x\[/\]\s+\S+\s+[123]/4\s+\d+%\s+\S+\s+\S+\s+slept \d")
    # No total yet: an indeterminate bar, a count without total or percentage, no ETA.
    assert showed(r"no total\s+\S+\s+[123]\s+\S+\s+-\s+counted \d")
    assert showed("Ctrl-C stops watching")
    final = term.text()
    assert re.search(r"\[bold\]x\[/\]\s+━+\s+4/4\s+100%\s+\S+\s+✓ completed", term.line_of(steady, final))
    assert term.line_of(failing, final).rstrip().endswith("✗ failed: ValueError: disk full")
    assert "second line" not in final
    assert re.search(r"no total\s+━+\s+4\s+\S+\s+✓ completed", term.line_of(counting, final))
    assert "running 0 · pending 0 · done 2 · failed 1 · cancelled 0" in final
    assert "Ctrl-C" not in final
    # The name is text, not markup: as markup, `x` would be bold and the brackets gone.
    row = term.row_index(steady)
    assert row is not None
    name_at = term.line_of(steady, final).index("[bold]x[/]")
    assert not any(term.screen.buffer[row][x].bold for x in range(name_at, name_at + 10))


def _assert_plain_lines(got: list[str], steady: int, failing: int) -> None:
    assert all(re.match(rf"^{CLOCK} job \d+ ", line) for line in got[:-1]), got
    body = [re.sub(rf"^{CLOCK} ", "", line) for line in got[:-1]]
    mine = [line for line in body if line.startswith(f'job {steady} "[bold]x[/]" ')]
    assert mine[0].startswith(f'job {steady} "[bold]x[/]" pending')
    assert f'job {steady} "[bold]x[/]" processing on ' in "\n".join(mine)
    steps = [line.split('" ', 1)[1] for line in mine if re.search(r'" \d/4 ', line)]
    assert len(steps) >= 2 and steps[-1] == "4/4 100% slept 4"
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one line per step, in order
    assert re.match(rf'^job {steady} "\[bold\]x\[/\]" completed ✓ in \d', mine[-1])
    failed = [line for line in body if line.startswith(f'job {failing} "boom" ')]
    assert failed[-1] == f'job {failing} "boom" failed ✗: ValueError: disk full'
    assert got[-1] == "running 0 · pending 0 · done 2 · failed 1 · cancelled 0"


def test_watch_in_a_terminal_and_through_a_pipe_while_workers_run(env, cli, terminal, start_worker) -> None:
    steady = submit("[bold]x[/]", "sleep", seconds=2, steps=4)
    failing = submit("boom", "boom", message="disk full\nsecond line")
    counting = submit("no total", "count", seconds=2, steps=4)
    ids = [str(steady), str(failing), str(counting)]
    piped = subprocess.Popen(
        [sys.executable, "-m", "jobctl", "watch", *ids, "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    term = terminal("watch", *ids, "--interval", "0.2")
    term.wait_for(lambda s: "pending 3" in s)
    first_line = piped.stdout.readline() if piped.stdout else ""
    start_worker("-c", "3")  # only now: both watchers see the jobs start
    assert term.finish() == 1  # one job failed
    out, err = piped.communicate(timeout=60)
    assert piped.returncode == 1, err
    out = first_line + out
    _assert_terminal_screens(term, steady, failing, counting)
    assert "\x1b" not in out
    _assert_plain_lines(out.splitlines(), steady, failing)

    # submit --watch (bulk too) prints the ids, then watches them, and exits with watch's code.
    result = cli("submit", "--from", "-", "-t", "noop", "-w", input='{"name": "a"}\n{"name": "b"}\n')
    assert result.exit_code == 0, result
    got = result.stdout.splitlines()
    a, b = int(got[0]), int(got[1])
    for job_id, name in ((a, "a"), (b, "b")):
        assert re.search(rf'^{CLOCK} job {job_id} "{name}" completed ✓', result.stdout, re.M)
    assert got[-1] == "running 0 · pending 0 · done 2 · failed 0 · cancelled 0"
    result = cli("submit", "bad", "-t", "boom", "--watch")
    assert result.exit_code == 1
    assert re.search(rf'^{CLOCK} job \d+ "bad" failed ✗: ValueError: boom$', result.stdout, re.M)


def test_pending_jobs_show_their_queue_place_and_ctrl_c_leaves_them_queued(terminal) -> None:
    ids = [submit(f"queued {i}") for i in range(30)]
    term = terminal("watch", "--interval", "0.2", rows=12)
    text = term.wait_for(lambda s: "pending 30" in s)
    assert re.search(r"queued 0\s.*pending, #1 in queue default", term.line_of(ids[0], text))
    assert re.search(r"queued 1\s.*pending, #2 in queue default", term.line_of(ids[1], text))
    # 30 rows do not fit in 12 lines: the first in the queue are shown, the rest summarised.
    assert "+22 not shown (22 pending)" in text
    assert not term.line_of(ids[-1], text)
    term.child.sendintr()
    assert term.finish() == 130
    views = service.list_jobs(limit=100)
    assert {v.job.status for v in views} == {"pending"}
    assert service.show_job(ids[0]).live.position == 0  # type: ignore[union-attr]


def test_without_ids_it_follows_jobs_submitted_while_it_runs(env) -> None:
    earlier = submit("earlier")
    service.cancel_job(earlier)  # ended before the watch began: not followed
    first = submit("first")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobctl", "watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(f'job {first} "first" pending' in line for line in lines), 30)
        second = submit("second")
        wait_for(lambda: any(f'job {second} "second" pending' in line for line in lines), 30)
        service.cancel_job(first)
        wait_for(lambda: any(f'job {first} "first" cancelled' in line for line in lines), 30)
        assert proc.poll() is None  # `second` is still active
        service.cancel_job(second)
        assert proc.wait(30) == 1  # nothing active any more; not every job completed
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert not any(f"job {earlier} " in line for line in lines)
    assert re.search(rf'^{CLOCK} job {second} "second" cancelled$', "".join(lines), re.M)
    assert lines[-1].strip() == "running 0 · pending 0 · done 0 · failed 0 · cancelled 2"


def test_follow_keeps_waiting_until_ctrl_c(env) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobctl", "watch", "--follow", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    errors: list[str] = []
    for stream, sink in ((proc.stdout, lines), (proc.stderr, errors)):
        threading.Thread(target=lambda st=stream, si=sink: si.extend(st or []), daemon=True).start()
    try:
        wait_for(lambda: "Watching for new jobs; Ctrl-C to stop.\n" in errors, 30)
        job_id = submit("late")
        wait_for(lambda: any(f'job {job_id} "late" pending' in line for line in lines), 30)
        assert service.cancel_job(job_id).ok
        wait_for(lambda: any(f'job {job_id} "late" cancelled' in line for line in lines), 30)
        assert proc.poll() is None  # nothing is active, and it keeps waiting
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: "Stopped watching; the jobs keep running.\n" in errors, 5)
    assert store.get_job(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_list_watch_redraws_the_table_and_highlights_changed_rows(env, terminal) -> None:
    first, second = submit("one"), submit("two")
    piped = subprocess.Popen(
        [sys.executable, "-m", "jobctl", "list", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(piped.stdout or []), daemon=True).start()
    term = terminal("list", "--watch", rows=12)
    term.wait_for(lambda s: "pending" in term.line_of(first, s) and "pending" in term.line_of(second, s))
    wait_for(lambda: len(lines) >= 3, 30)  # the table, printed once
    assert service.cancel_job(first).ok
    term.wait_for(lambda s: "cancelled" in term.line_of(first, s) and term.row_index(second) is not None)
    assert term.reversed_row(first) is True
    assert term.reversed_row(second) is False
    term.wait_for(lambda s: term.reversed_row(first) is False, 10)  # only briefly
    assert "cancelled" in term.line_of(first)
    term.child.sendintr()
    assert term.finish() == 130
    # Not a terminal: the table once, then a line per status change.
    wait_for(lambda: any("→" in line for line in lines), 30)
    piped.send_signal(signal.SIGINT)
    assert piped.wait(30) == 130
    assert lines[0].split() == ["ID", "NAME", "TASK", "STATUS", "PROGRESS", "CREATED", "DURATION"]
    assert [line.split()[:4] for line in lines[1:3]] == [
        [str(second), "two", "noop", "pending"],
        [str(first), "one", "noop", "pending"],
    ]
    assert re.fullmatch(rf'{CLOCK} job {first} "one" pending → cancelled\n', lines[3])
    assert len(lines) == 4 and "\x1b" not in "".join(lines)
    assert store.get_job(second).status == "pending"  # type: ignore[union-attr]


def test_unknown_ids_bad_options_and_nothing_to_watch(cli) -> None:
    out = cli("watch")
    assert (out.exit_code, out.stdout) == (0, "")
    assert "No active jobs to watch." in out.stderr
    job_id = submit("x")
    service.cancel_job(job_id)
    out = cli("watch", str(job_id))
    assert out.exit_code == 1
    assert re.fullmatch(rf'{CLOCK} job {job_id} "x" cancelled\n.*cancelled 1\n', out.stdout)
    for args, code, message in (
        (["watch", "99"], 3, "Error: job 99 not found"),
        (["watch", "0", str(job_id), "98"], 3, "Error: jobs 0, 98 not found"),
        (["watch", str(job_id), "--follow"], 2, "Error: --follow watches every job as it is submitted"),
        (["watch", "--interval", "0"], 2, "Error: "),
        (["list", "--watch", "--json"], 2, "Error: --watch draws the table"),
        (["list", "--watch", "-s", "nope"], 2, "Error: unknown status 'nope'"),
    ):
        out = cli(*args)
        assert out.exit_code == code, (args, out)
        assert out.stderr.startswith(message), (args, out)
        assert "Traceback" not in out.stderr
