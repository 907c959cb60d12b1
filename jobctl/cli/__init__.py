"""The command line: the only package that imports typer and rich."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer._click import exceptions as click_exceptions  # typer >= 0.29 vendors click here
from typer.core import TyperGroup

from ..errors import JobctlError


def error_line(message: str) -> None:
    """Print one `Error: ...` line on stderr, literally."""
    text = " ".join(str(message).split("\n")[0:1]).strip() or "unknown error"
    typer.echo(f"Error: {text}", err=True)


class JobctlGroup(TyperGroup):
    """Turns JobctlErrors and usage errors into one `Error:` line and the SPEC's exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except JobctlError as exc:
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except click_exceptions.UsageError as exc:
            error_line(exc.format_message())
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, typer.Abort):
            typer.echo("Interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=JobctlGroup,
    name="jobctl",
    help="Submit, list, watch and cancel background jobs running on RQ workers.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

from . import dashboard, demo, jobs, ops, schedule, system, watch, workers  # noqa: E402  (commands register on `app`)

__all__ = ["app", "dashboard", "demo", "jobs", "main", "ops", "schedule", "system", "watch", "workers"]


def main() -> None:
    """The `jobctl` entry point."""
    try:
        app(prog_name="jobctl")
    except KeyboardInterrupt:
        typer.echo("Interrupted", err=True)
        sys.exit(130)
