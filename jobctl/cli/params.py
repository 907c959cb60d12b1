"""Shared by commands: ids from stdin (`-`), `submit NAME -- CMD`, shell completion, JSON output."""

from __future__ import annotations

import enum
import sys
from typing import Any

import typer
from typer.core import TyperCommand

from ..errors import UsageError

COMPLETION_LIMIT = 50


def read_ids(tokens: list[str]) -> list[int]:
    """Job ids as typed; `-` stands for the ids on stdin (whitespace separated, as `list -o ids` prints)."""
    ids: list[int] = []
    for token in tokens:
        words = sys.stdin.read().split() if token == "-" else [token]
        for word in words:
            try:
                ids.append(int(word))
            except ValueError:
                raise UsageError(f"invalid job id {word!r}: ids are whole numbers") from None
    if not ids:
        raise UsageError("no job ids given (stdin was empty)" if "-" in tokens else "no job ids given")
    return ids


class CommandAfterDashes(TyperCommand):
    """A command taking a program to run after `--`: `submit NAME [OPTIONS] -- CMD [ARGS]...`.

    What follows `--` is kept apart in `ctx.meta["command"]`, so its own options (`ls -l`) are never
    parsed as jobctl's, and without `--` extra words are an error rather than a command.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["command"] = args[cut + 1 :]
            args = args[:cut]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- CMD [ARGS]...]"]


def command_after_dashes(ctx: typer.Context) -> list[str] | None:
    """The program and arguments given after `--`, if any."""
    command = ctx.meta.get("command")
    return list(command) if command is not None else None


# ---------------------------------------------------------------- completion
# Callbacks run on every <Tab>: they must be quick, start nothing, and never print an error.


def _ids(statuses: tuple[str, ...], args: list[str], incomplete: str) -> list[tuple[str, str]]:
    try:
        from rich.markup import escape  # zsh and fish show the help through rich: names stay literal

        from ..completion import job_ids

        found = job_ids(incomplete, statuses, COMPLETION_LIMIT)
        return [(str(i), escape(text)) for i, text in found if str(i) not in args]
    except Exception:
        return []


def complete_job_id(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    """Any job id, newest first, with its status and name."""
    return _ids((), args, incomplete)


def complete_active_id(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    """Ids of pending and processing jobs (what `cancel` and `wait` take)."""
    return _ids(("pending", "processing"), args, incomplete)


def complete_retryable_id(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    """Ids of failed and cancelled jobs (what `retry` takes)."""
    return _ids(("failed", "cancelled"), args, incomplete)


def complete_task(incomplete: str) -> list[tuple[str, str]]:
    """Registered task names with their summaries."""
    try:
        from ..completion import task_names

        return task_names(incomplete)
    except Exception:
        return []


def complete_queue(incomplete: str) -> list[str]:
    """Queue names jobs have used, and the default queue."""
    try:
        from ..completion import queue_names

        return queue_names(incomplete, COMPLETION_LIMIT)
    except Exception:
        return []


def complete_status(incomplete: str) -> list[str]:
    """The five statuses."""
    statuses = ("pending", "processing", "completed", "failed", "cancelled")
    return [s for s in statuses if s.startswith(incomplete.lower())]


# ---------------------------------------------------------------- list output and shell submissions


class Output(enum.StrEnum):
    """`list --output`: a table for people, JSON or JSON Lines for programs, bare ids for pipes."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    ids = "ids"


def print_json(data: Any) -> None:
    """Data as JSON on stdout (no rich: scripts reading JSON do not pay for it)."""
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def print_views(views: list[Any], output: Output) -> None:
    """Jobs as JSON Lines or one id per line (for `| jobctl cancel -`)."""
    import json

    if output is Output.ids:
        sys.stdout.write("".join(f"{v.job.id}\n" for v in views))
    else:
        sys.stdout.write("".join(json.dumps(v.to_public(), ensure_ascii=False) + "\n" for v in views))


def apply_command(
    ctx: typer.Context, request: Any, progress_pattern: str | None, from_file: str | None
) -> bool:
    """Make `submit [NAME] -- CMD [ARGS]...` a `shell` job request; False when no command was given."""
    import shlex

    from ..shell import SHELL_TASK

    command = command_after_dashes(ctx)
    if command is None:
        if progress_pattern is not None:
            raise UsageError("--progress-pattern goes with a command after --: submit NAME ... -- CMD")
        return False
    if from_file is not None:
        raise UsageError("give either --from or a command after --, not both")
    if not command:
        raise UsageError("missing the command after --")
    source = ctx.get_parameter_source("task")
    if source is not None and source.name != "DEFAULT":
        raise UsageError("a command after -- runs as a shell job: leave out -t")
    if request.args:
        raise UsageError("-a sets task arguments: a command after -- takes its own arguments")
    request.task = SHELL_TASK
    request.args = {"command": command}
    if progress_pattern is not None:
        request.args["progress_pattern"] = progress_pattern
    if not request.name:
        request.name = shlex.join(command)
    return True
