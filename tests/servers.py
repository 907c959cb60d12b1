"""Private Redis and PostgreSQL servers that tests and the chaos bench may stop, restart and break.

The machine's shared servers are never touched: each helper starts its own process on a free port,
in its own temporary directory, and stops it by PID (or `pg_ctl`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    """A redis-server of our own: start, stop (SIGKILL or clean), restart on the same port."""

    def __init__(self, *, password: str | None = None, persistent: bool = False, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            from jobctl.embedded import find_redis_server

            binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server binary found")
        self.binary = binary
        self.password = password
        self.persistent = persistent
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jobctl-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        import redis

        try:
            conn = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
            return bool(conn.ping())
        except redis.RedisError:
            return False

    def start(self) -> RedisServer:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        if self.persistent:
            cmd += ["--appendfsync", "always"]
        if self.password:
            cmd += ["--requirepass", self.password]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait(self._answers, 15, f"redis-server on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL by default: a crash, nothing saved beyond the append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Crash the server, stay down for `down_for` seconds, and start it again on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} was not found")
    return found


def postgres_available() -> bool:
    """True when initdb and pg_ctl can be found."""
    try:
        _pg_bin("initdb")
        _pg_bin("pg_ctl")
    except RuntimeError:
        return False
    return True


def _runuser() -> str:
    """runuser, also when the PATH leaves out the sbin directories (root runs the server as postgres)."""
    found = shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise RuntimeError("runuser not found: needed to run PostgreSQL as root")
    return found


class PostgresServer:
    """A PostgreSQL cluster of our own (initdb in a temporary directory), stopped and started at will."""

    def __init__(self, *, password: str | None = None, port: int | None = None):
        self.password = password
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jobctl-pg-"))
        self.data = self.dir / "data"
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._initdb()

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ([_runuser(), "-u", "postgres", "--"] if self.as_postgres else []) + args
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir, check=False)

    def _initdb(self) -> None:
        args = [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync", "-E", "UTF8"]
        if self.password:
            pwfile = self.dir / "pw"
            pwfile.write_text(self.password + "\n")
            if self.as_postgres:
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth=trust"]
        done = self._run(args)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")

    @property
    def admin_url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """The URL of a database on this server."""
        auth = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def answers(self) -> bool:
        """True when the server accepts connections."""
        import psycopg2

        try:
            psycopg2.connect(self.admin_url, connect_timeout=1).close()
            return True
        except psycopg2.Error:
            return False

    def start(self) -> PostgresServer:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        opts += " -c max_connections=200"
        log = str(self.dir / "pg.log")
        done = self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", log, "-w", "start"])
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}")
        _wait(self.answers, 30, f"PostgreSQL on port {self.port}")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (`immediate`: clients see their connections drop, as in a crash)."""
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url_for(name)

    def close(self) -> None:
        """Stop the server and remove its files."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
