"""System commands: health, tasks, config, db upgrade."""

from __future__ import annotations

from typing import Annotated

import typer

from . import LeanGroup, app

db_app = typer.Typer(cls=LeanGroup, help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def health(
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, max=3600, help="Seconds to wait for a worker.")
    ] = 10.0,
) -> None:
    """Check the database, Redis and a round trip through a worker; exit 0 only if all pass."""
    from .. import system
    from .render import checks_table, stdout

    checks = system.health(timeout)
    stdout().print(checks_table(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(4 if not all(c.ok for c in checks[:2]) else 1)


@app.command()
def tasks() -> None:
    """List registered tasks with their parameters."""
    import inspect

    from rich.table import Table
    from rich.text import Text

    from .. import system
    from .render import stdout

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TASK", "PARAMETERS", "DESCRIPTION"):
        table.add_column(column, overflow="fold")
    for spec in system.task_list():
        params = []
        for p in spec.params:
            text = f"{p.name}: {p.type_name}"
            if p.default is not inspect.Parameter.empty:
                text += f" = {p.default!r}"
            params.append(text)
        table.add_row(Text(spec.name), Text(", ".join(params) or "-"), Text(spec.summary))
    stdout().print(table)


@app.command()
def config() -> None:
    """Show the effective settings (secrets masked) and which mode each backend is in."""
    from rich.table import Table
    from rich.text import Text

    from .. import system
    from .render import stdout

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in system.effective_config():
        table.add_row(key, Text(value))
    stdout().print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database schema migrations (Alembic)."""
    from ..schema import upgrade_schema

    revision = upgrade_schema()
    typer.echo(f"database schema at revision {revision}", err=True)
