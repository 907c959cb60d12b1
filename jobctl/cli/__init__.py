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


class LeanGroup(TyperGroup):
    """A command group whose own flags (--help, the completion options) never need pydantic."""

    def get_params(self, ctx: Any) -> list[Any]:
        # typer gives these flags a None default, and a value that is not a bool goes through its
        # pydantic coercion: `jobctl CMD --help` would import pydantic for the group's unused flags.
        params: list[Any] = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
        return params


class JobctlGroup(LeanGroup):
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


def _evaluate_annotations(typer_app: typer.Typer) -> None:
    """Evaluate the commands' annotations once, in place.

    They are strings (`from __future__ import annotations`), and typer evaluates each signature two or
    three times while it builds the commands, creating every `Annotated[..., typer.Option(...)]` anew:
    half the time every invocation, `--help` included, spends building them.
    """
    import inspect

    infos = [*typer_app.registered_commands, typer_app.registered_callback]
    for info in infos:
        callback = getattr(info, "callback", None)
        if callback is not None:
            callback.__annotations__ = inspect.get_annotations(callback, eval_str=True)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _evaluate_annotations(group.typer_instance)


_evaluate_annotations(app)


def main() -> None:
    """The `jobctl` entry point."""
    try:
        app(prog_name="jobctl")
    except KeyboardInterrupt:
        typer.echo("Interrupted", err=True)
        sys.exit(130)
