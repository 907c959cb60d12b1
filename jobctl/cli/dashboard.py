"""The dashboard command: rq-dashboard on jobctl's Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from . import app

if TYPE_CHECKING:
    from ..dashboard import Listening


@app.command()
def dashboard(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything beyond loopback needs credentials.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 9181,
    username: Annotated[
        str | None,
        typer.Option("--username", help="HTTP Basic auth user [default: $JOBCTL_DASHBOARD_USERNAME]."),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            help="HTTP Basic auth password [default: $JOBCTL_DASHBOARD_PASSWORD, hidden from `ps`].",
        ),
    ] = None,
) -> None:
    """Serve rq-dashboard for jobctl's queues, workers and jobs (JSON only; Ctrl-C stops it)."""
    from ..config import get_settings
    from ..dashboard import serve

    settings = get_settings()

    def ready(listening: Listening) -> None:
        auth = "Basic auth required" if listening.protected else "no login: this machine only"
        for url in listening.urls:
            typer.echo(f"Dashboard at {url} ({auth}), Redis {listening.redis}", err=True)
        typer.echo("Press Ctrl-C to stop.", err=True)

    serve(
        host,
        port,
        username=username if username is not None else settings.dashboard_username,
        password=password if password is not None else settings.dashboard_password,
        on_ready=ready,
    )
    typer.echo("Dashboard stopped.", err=True)
