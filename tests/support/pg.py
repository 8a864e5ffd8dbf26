"""A throwaway PostgreSQL server for the tests, started from the distribution's binaries.

`pg_server` (session scope) runs `initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin as an
unprivileged user (PostgreSQL refuses to run as root: when the tests run as root, the `postgres`
system user is used, or a `secretfs-pg` system user is created). The data directory lives in a
private temporary directory owned by that user; the server listens on a free loopback port only,
with its unix socket in the temporary directory and trust authentication. At the end of the session
the server is stopped and every file removed, also when the session fails.

`pg_server` creates a database at startup (`pg_session_url` is its `postgresql+psycopg://` URL);
`pg_url` (function scope) creates a fresh, empty database for one test and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from secretfs import crypto
from tests.support.wait import wait_until

SUPERUSER = "secretfs"
FALLBACK_OS_USER = "secretfs-pg"
SESSION_DATABASE = "secretfs"


def pg_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run `scripts/bootstrap --test`"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_OS_USER)


@dataclass
class PgServer:
    """A running server: where it lives and how to reach it."""

    bin_dir: Path
    root: Path
    port: int
    account: pwd.struct_passwd | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def database_url(self) -> str:
        """The URL of the database created at startup."""
        return self.url(SESSION_DATABASE)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server's account."""
        kwargs: dict[str, Any] = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def admin(self, sql: str) -> None:
        """Run one statement in autocommit mode on the maintenance database."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(sql.encode())

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


def _check(result: subprocess.CompletedProcess[str], what: str, server: PgServer) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}\n{server.log_tail()}")


def server_options(port: int, socket_dir: Path) -> str:
    """postgres -c options: loopback only, private socket dir, durability off (a test server)."""
    return " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            f"-c unix_socket_directories={socket_dir}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
        ]
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """Start a private PostgreSQL server; stop it and remove its files when the block ends."""
    account = server_account()
    # Under /tmp when the server runs as another user: $TMPDIR may not be traversable by it.
    root = Path(tempfile.mkdtemp(prefix="secretfs-pg-", dir="/tmp" if account is not None else None))
    server = PgServer(pg_bin_dir(), root, free_port(), account)
    started = False
    try:
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        root.chmod(0o700)
        _check(
            server.run(
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ),
            "initdb",
            server,
        )
        for attempt in range(3):
            result = server.run(
                "pg_ctl",
                "start",
                "-D",
                str(server.data_dir),
                "-l",
                str(server.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                server_options(server.port, root),
            )
            started = True
            if result.returncode == 0:
                break
            # Another process may have taken the port between free_port() and the bind: try another.
            server.run("pg_ctl", "stop", "-D", str(server.data_dir), "-m", "immediate", "-w")
            if attempt == 2:
                _check(result, "pg_ctl start", server)
            server.port = free_port()
        wait_until(
            lambda: server.run("pg_isready", "-h", "127.0.0.1", "-p", str(server.port), "-t", "2").returncode == 0,
            60,
            interval=0.1,
            message=lambda: f"PostgreSQL not ready:\n{server.log_tail()}",
        )
        server.admin(f"CREATE DATABASE {SESSION_DATABASE}")
        yield server
    finally:
        if started:
            server.run("pg_ctl", "stop", "-D", str(server.data_dir), "-m", "fast", "-w", "-t", "30")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole test session."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_session_url(pg_server: PgServer) -> str:
    """The URL of the database created with the server (shared by the session; prefer pg_url)."""
    return pg_server.database_url


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    pg_server.admin(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url(name)
    finally:
        pg_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def plain_sql_update(url: str, secret: str, name: str, value: str) -> None:
    """What another program (Archestra) does: UPDATE the row with a fresh envelope, in plain SQL."""
    envelope = crypto.encrypt(crypto.derive_key(secret), {"value": value})
    conninfo = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "UPDATE secret SET secret = %s::jsonb, updated_at = now() WHERE name = %s", (json.dumps(envelope), name)
        )
