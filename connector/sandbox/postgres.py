"""A real PostgreSQL server in a folder of its own, on 127.0.0.1 and a free port: what the store tests use.

Debian's `postgresql` package puts initdb and postgres under /usr/lib/postgresql/<version>/bin,
off the PATH. Both refuse to run as root, so as root the cluster belongs to the `postgres`
user (the folder is handed to it); as anyone else it belongs to the caller. The server
listens on TCP only (no socket file in /var/run) and trusts local connections: a sandbox.
It runs in the foreground under a watchdog that stops it when its stdin, a pipe from this
process, closes: a killed test run leaves no server behind (pg_ctl's would outlive it).
"""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

from ..store.postgres import binary

SUPERUSER = "postgres"


def missing() -> str:
    """Why no sandbox server can start here, or ''."""
    absent = [name for name in ("initdb", "postgres") if not binary(name)]
    if absent:
        return f"{' and '.join(absent)} not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`PostgresServer(dir).start()` ... `.stop()`; `.url(db)` names a database, `.create_database(name)`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", SUPERUSER, "--", *argv] if self.as_root else list(argv)
        done = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            for parent in self.directory.parents:       # pytest's temp folders are 0700: let the server in
                if parent == Path("/tmp") or parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._run(binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        server = [binary("postgres"), "-D", str(self.data), "-c", "listen_addresses=127.0.0.1", "-c",
                  f"port={self.port}", "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=400"]
        watchdog = ["sh", "-c", '"$@" </dev/null & pid=$!; cat >/dev/null; kill -INT "$pid"; wait "$pid"', "sh", *server]
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(["runuser", "-u", SUPERUSER, "--", *watchdog] if self.as_root else watchdog,
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not accept connections on port {self.port}:\n{log}")
            time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        """A session opens: the port alone answers while the server still says "starting up"."""
        import psycopg

        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown: the watchdog sees its stdin close."""
        self.process.stdin.close()
        self.process.wait(60)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
