"""Shell-command jobs: the built-in `shell` task, its queues, and the `--allow-shell` boundary.

A shell job runs `command` (an argument list, no shell in between) on a worker. Such jobs go to the
queue `<queue>.shell`, which only workers started with `--allow-shell` listen on; the task itself also
refuses to run unless JOBCTL_ALLOW_SHELL=1 is set in its process (which `--allow-shell` does).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from .errors import UsageError
from .tasks import task

SHELL_TASK = "shell"
ALLOW_ENV = "JOBCTL_ALLOW_SHELL"
SUFFIX = ".shell"
STDERR_TAIL = 20  # lines of stderr kept in the error of a failed command
MESSAGE_MAX = 200


class CommandFailed(Exception):
    """The command exited with a non-zero status (or could not start); the message says it all."""

    without_traceback = True


class ShellNotAllowed(Exception):
    """A shell job reached a process that was not started to run shell commands."""

    without_traceback = True


# ---------------------------------------------------------------- queues


def is_shell_queue(name: str) -> bool:
    """True for the queues that hold shell jobs."""
    return name.endswith(SUFFIX)


def shell_queue(name: str) -> str:
    """The queue a shell job submitted to `name` goes to."""
    return name if is_shell_queue(name) else name + SUFFIX


def worker_queues(names: Iterable[str], allow_shell: bool) -> list[str]:
    """The queues a worker serves: each queue followed by its shell queue with `--allow-shell`;
    without it, a shell queue is refused."""
    names = list(names)
    if not allow_shell:
        for name in names:
            if is_shell_queue(name):
                raise UsageError(
                    f"queue {name!r} holds shell commands: start the worker with --allow-shell to serve it"
                )
        return names
    out: list[str] = []
    for name in names:
        out.append(name)
        out.append(shell_queue(name))
    return list(dict.fromkeys(out))


def allow_in_this_process() -> None:
    """Let this process and the work-horses it forks run shell jobs."""
    os.environ[ALLOW_ENV] = "1"


# ---------------------------------------------------------------- submitting


def check_request(args: Mapping[str, Any], queue: str) -> str:
    """Check a shell job's arguments beyond their types; returns the queue it goes to."""
    command = args.get("command")
    if not isinstance(command, list) or not command:
        raise UsageError("a shell job needs a command: jobctl submit NAME -- CMD [ARGS]...")
    if any(not isinstance(part, str) or "\x00" in part for part in command):
        raise UsageError("command arguments must be strings without NUL characters")
    if not command[0]:
        raise UsageError("the command must not be empty")
    pattern = args.get("progress_pattern")
    if pattern is not None:
        ProgressPattern(pattern)
    routed = shell_queue(queue)
    if len(routed) > 255:
        raise UsageError(f"queue name {queue!r} is too long for a shell job's queue {routed!r}")
    return routed


class ProgressPattern:
    """`--progress-pattern`: a regex whose match in an output line is the job's progress.

    One group is a percentage (`(\\d+)%`); two groups, or groups named `current` and `total`, are a count
    out of a total (`(\\d+)/(\\d+)`).
    """

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"invalid --progress-pattern {pattern!r}: {exc}") from None
        named = self.regex.groupindex
        if not self.regex.groups or (named and "current" not in named):
            raise UsageError(
                f"--progress-pattern {pattern!r} needs a group: (\\d+)% for a percentage, "
                "(\\d+)/(\\d+) or (?P<current>...)/(?P<total>...) for a count"
            )

    def match(self, line: str) -> tuple[int, int] | None:
        """(current, total) from a line, or None when it does not match or is not a number."""
        found = self.regex.search(line)
        if found is None:
            return None
        if "current" in self.regex.groupindex:
            current, total = found.group("current"), found.groupdict().get("total")
        elif self.regex.groups >= 2:
            current, total = found.group(1), found.group(2)
        else:
            current, total = found.group(1), "100"
        try:
            return int(float(current)), int(float(total)) if total is not None else 100
        except (TypeError, ValueError):
            return None


# ---------------------------------------------------------------- running


@task(name=SHELL_TASK)
def shell(command: list[str], progress_pattern: str | None = None) -> dict[str, Any]:
    """Run a command (on workers started with --allow-shell); its output is the job's log."""
    from .config import get_settings

    if os.environ.get(ALLOW_ENV) != "1":
        raise ShellNotAllowed(
            "this worker does not run shell commands: serve shell queues with `jobctl worker --allow-shell`"
        )
    pattern = ProgressPattern(progress_pattern) if progress_pattern else None
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a cancel reaches everything it started
        )
    except FileNotFoundError:
        raise CommandFailed(f"command not found: {command[0]}") from None
    except OSError as exc:
        raise CommandFailed(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    grace = get_settings().cancel_grace * 0.7  # within the grace the worker gives this process
    guard = _guard(proc.pid, grace)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, 1, pattern, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, 2, pattern, tail), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        code = proc.wait()
    except BaseException:
        # Cancelled (SIGTERM), timed out or interrupted: the whole group goes.
        stop_group(proc, grace)
        raise
    finally:
        for pump in pumps:
            pump.join(2)
        _release(guard)
    if code != 0:
        raise CommandFailed(failure_text(code, list(tail)))
    return {"exit_code": 0, "seconds": round(time.monotonic() - started, 3)}


# Waits on its stdin: "done" means the command ended; end of file means this process died without
# cleaning up (killed by the worker's cold shutdown, a hard time limit, OOM), so the guard does it.
_GUARD_SCRIPT = (
    'read line; [ "$line" = done ] && exit 0; '
    'kill -TERM "-$1" 2>/dev/null; sleep "$2"; kill -KILL "-$1" 2>/dev/null; exit 0'
)


def _guard(pgid: int, grace: float) -> subprocess.Popen[bytes] | None:
    """A tiny `sh` that ends the command's process group if this process dies before the command."""
    try:
        return subprocess.Popen(
            ["sh", "-c", _GUARD_SCRIPT, "jobctl-shell-guard", str(pgid), f"{grace:.2f}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of reach of a kill aimed at this process's group
        )
    except OSError:
        return None


def _release(guard: subprocess.Popen[bytes] | None) -> None:
    if guard is None or guard.stdin is None:
        return
    with contextlib.suppress(OSError):
        guard.stdin.write(b"done\n")
        guard.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(5)


def failure_text(code: int, stderr_tail: list[str]) -> str:
    """`command exited with status 2: <last stderr line>`, then the tail of stderr."""
    if code < 0:
        try:
            first = f"command was killed by {signal.Signals(-code).name}"
        except ValueError:
            first = f"command was killed by signal {-code}"
    else:
        first = f"command exited with status {code}"
    lines = [line for line in stderr_tail if line.strip()]
    if not lines:
        return first
    return f"{first}: {lines[-1].strip()}\n\nstderr (last {len(lines)} lines):\n" + "\n".join(lines)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the command's process group; SIGKILL to whatever is left of it after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member of the group
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.poll()


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _pump(
    pipe: IO[bytes], fd: int, pattern: ProgressPattern | None, tail: collections.deque[str] | None
) -> None:
    """Copy the command's output to this process's stdout or stderr (the job's log) line by line,
    turning matching lines into progress. A carriage return ends a line too (progress bars)."""
    from .runtime import progress

    buffer = b""
    while True:
        chunk = os.read(pipe.fileno(), 65536)
        if chunk:
            buffer += chunk
            # A "\r" at the end may be the first half of "\r\n": keep it for the next chunk.
            held = b"\r" if buffer.endswith(b"\r") else b""
            *lines, buffer = _LINE_END.split(buffer[: len(buffer) - len(held)])
            buffer += held
        else:
            lines, buffer = ([buffer] if buffer else []), b""
        for raw in lines:
            _write_all(fd, raw + b"\n")
            text = raw.decode("utf-8", "replace")
            if tail is not None:
                tail.append(text)
            if pattern is not None:
                found = pattern.match(text)
                if found is not None:
                    progress(found[0], found[1], text.strip()[:MESSAGE_MAX])
        if not chunk:
            pipe.close()
            return


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            return  # nowhere to write (the log capture ended): drop the output rather than the job
        data = data[written:]
