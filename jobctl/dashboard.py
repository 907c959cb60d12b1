"""rq-dashboard on jobctl's Redis: JSON only, Basic auth, loopback unless protected, served by waitress."""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import UsageError

if TYPE_CHECKING:
    from flask import Flask, Response

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9181
REALM = "jobctl dashboard"
CREDENTIALS_HINT = (
    "pass --username and --password (better: set JOBCTL_DASHBOARD_USERNAME and JOBCTL_DASHBOARD_PASSWORD)"
)

# rq-dashboard's client-side templates insert most fields as raw HTML (`<%= %>`), so a job named
# `<img src=x onerror=...>` would run script in the viewer's browser. Its JSON is escaped on the way
# out, except the fields its templates already escape themselves (escaping those twice would show `&lt;`).
_DATA_PATH = re.compile(r"^/\d+/data/(?P<kind>[a-z]+)")
_ESCAPED_BY_TEMPLATE = {"jobs": frozenset({"description", "exc_info"}), "workers": frozenset({"description"})}
# rq classes rq_dashboard.web builds objects from; each gets JSON as its default serializer.
_RQ_CLASSES = (
    "Job", "Queue", "Worker", "CanceledJobRegistry", "DeferredJobRegistry", "FailedJobRegistry",
    "FinishedJobRegistry", "ScheduledJobRegistry", "StartedJobRegistry",
)  # fmt: skip


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 or `localhost`."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_access(host: str, username: str | None, password: str | None) -> None:
    """Refuse half-given credentials, and any address beyond loopback without credentials."""
    if bool(username) != bool(password):
        raise UsageError(f"give both a dashboard username and a password, or neither: {CREDENTIALS_HINT}")
    if username and ":" in username:
        raise UsageError("the dashboard username cannot contain ':' (HTTP Basic auth)")
    if not username and not is_loopback(host):
        raise UsageError(
            f"refusing to serve the dashboard on {host} without credentials: {CREDENTIALS_HINT}, "
            f"or keep the default --host {DEFAULT_HOST}"
        )


def _json_default(cls: type) -> type:
    """A subclass of an rq class whose serializer defaults to JSON instead of pickle."""
    from rq.serializers import JSONSerializer

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("serializer") is None:
            kwargs["serializer"] = JSONSerializer
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]

    namespace = {
        "__init__": __init__,
        "__module__": __name__,
        "__qualname__": cls.__name__,
        "_jobctl_json": True,
    }
    return type(cls.__name__, (cls,), namespace)


def _use_json_only() -> None:
    """Make rq_dashboard read everything with RQ's JSON serializer: jobctl never unpickles anything."""
    import functools

    import rq.job
    from rq.serializers import JSONSerializer
    from rq_dashboard import web

    web.config.serializer = JSONSerializer
    # rq-dashboard passes its serializer to some calls only; job pages, workers and requeue
    # otherwise fall back to RQ's default, pickle.
    for name in _RQ_CLASSES:
        cls = getattr(web, name, None)
        if cls is not None and not getattr(cls, "_jobctl_json", False):
            setattr(web, name, _json_default(cls))
    web.requeue_job = functools.partial(rq.job.requeue_job, serializer=JSONSerializer)


def _escape(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    """`value` with every string HTML-escaped, except under the keys in `keep`."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [_escape(v, keep) for v in value]
    if isinstance(value, dict):
        return {html.escape(str(k)): v if k in keep else _escape(v, keep) for k, v in value.items()}
    return value


def _same_credentials(given: Any, username: str, password: str) -> bool:
    if given is None or given.type != "basic":
        return False
    # both compared, in constant time, so timing tells nothing about either
    user_ok = hmac.compare_digest((given.username or "").encode(), username.encode())
    password_ok = hmac.compare_digest((given.password or "").encode(), password.encode())
    return user_ok and password_ok


def _host_name(host_header: str) -> str:
    """The host part of a Host header (`[::1]:9181` -> `::1`)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def create_app(redis_url: str, username: str | None = None, password: str | None = None) -> Flask:
    """rq-dashboard as a Flask app on `redis_url`, JSON only, with Basic auth when credentials are given."""
    import rq_dashboard
    from flask import Flask, Response, request
    from redis.exceptions import ConnectionError as RedisConnectionError
    from rq.exceptions import NoSuchJobError
    from rq_dashboard import default_settings
    from rq_dashboard.web import blueprint, setup_rq_connection

    from .config import mask_url

    _use_json_only()
    # its templates link `static` files of the app, not of the blueprint
    app = Flask("jobctl.dashboard", static_folder=str(Path(rq_dashboard.__file__).parent / "static"))
    app.config.from_object(default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    # Deleting or emptying in Redis would go behind the SQL record's back; `jobctl cancel` is the way.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True

    def refuse(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
        return Response(text + "\n", status, headers or {}, mimetype="text/plain")

    @app.before_request
    def guard() -> Response | None:
        if username and password:
            if not _same_credentials(request.authorization, username, password):
                challenge = f'Basic realm="{REALM}", charset="UTF-8"'
                return refuse(401, "Login required.", {"WWW-Authenticate": challenge})
        elif not is_loopback(_host_name(request.host)):
            # a page elsewhere that re-points its own name at 127.0.0.1 (DNS rebinding) must not read it
            return refuse(
                403, "This dashboard answers only to a loopback address; set credentials to share it."
            )
        changes = request.method not in ("GET", "HEAD", "OPTIONS") or request.path.startswith("/requeue/")
        if changes:
            # a page on another site must not make the browser act on the dashboard (CSRF)
            site = request.headers.get("Sec-Fetch-Site")
            origin = request.headers.get("Origin")
            if (site is not None and site not in ("same-origin", "none")) or (
                origin is not None and urlsplit(origin).netloc != request.host
            ):
                return refuse(403, "Cross-site request refused.")
        return None

    @app.after_request
    def escape_data(response: Response) -> Response:
        match = _DATA_PATH.match(request.path)
        if match and response.mimetype == "application/json" and response.status_code == 200:
            keep = _ESCAPED_BY_TEMPLATE.get(match["kind"], frozenset())
            response.set_data(json.dumps(_escape(response.get_json(), keep)))
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(NoSuchJobError)
    def no_such_job(exc: Exception) -> Response:
        return refuse(404, "No such job in Redis: it may have expired; `jobctl show ID` keeps its record.")

    @app.errorhandler(RedisConnectionError)
    def redis_down(exc: Exception) -> Response:
        return refuse(503, f"Cannot reach Redis at {mask_url(redis_url)}.")

    app.register_blueprint(blueprint)
    setup_rq_connection(app)
    return app


@dataclass
class Listening:
    """Where a started dashboard answers."""

    urls: list[str]
    redis: str
    protected: bool


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    username: str | None = None,
    password: str | None = None,
    on_ready: Callable[[Listening], None] | None = None,
) -> None:
    """Serve the dashboard on jobctl's Redis until SIGTERM or Ctrl-C."""
    from .config import mask_url
    from .queue import ping, redis_url

    username, password = username or None, password or None
    check_access(host, username, password)
    url = redis_url()
    ping()
    app = create_app(url, username, password)

    from waitress import create_server

    try:
        server: Any = create_server(app, host=host, port=port, threads=8, ident="jobctl")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(
            f"cannot listen on {host}:{port} ({reason}); choose another --host or --port"
        ) from None
    listen = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    if on_ready:
        on_ready(Listening([_url(h, p) for h, p in listen], mask_url(url), bool(username)))

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()  # returns once SIGTERM or Ctrl-C stops it
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
