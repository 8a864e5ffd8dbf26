"""Read-your-writes between the processes of one host: each mount listens on a control socket.

A command that writes (the CLI's put, rm, migrate, rotate-key) or a mount that committed a change
tells every other live mount of the same store on this host which secrets changed, and waits for
each to answer: a mount answers once the kernel has dropped what it held of those names, so when
the writer returns, every local mount serves the new state. A mount that does not answer within
`ANSWER_LIMIT` gets a warning, never a hang.

Sockets live in one directory per user (`runtime_dir()`, mode 0700), named by a hash of the store's
identity and the daemon's pid; the daemon checks that a peer runs as its own user (or root). A
message carries secret names only, never a value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from secretfs.config import Settings

log = logging.getLogger(__name__)

ANSWER_LIMIT = 2.0  # seconds a writer waits for each mount's answer
ALL = "*"  # "every secret may have changed" (migrate, rotate-key)
_MAX_MESSAGE = 1 << 20


def runtime_dir() -> Path:
    """Where this user's control sockets live (SECRETFS_RUNTIME_DIR overrides: one per 'host')."""
    override = os.environ.get("SECRETFS_RUNTIME_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/secretfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "secretfs" if xdg else Path(f"/tmp/secretfs-{os.geteuid()}")


def store_id(settings: Settings) -> str:
    """A short hash naming the store: the same for every process that opens the same store."""
    if settings.mode == "DB":
        import sqlalchemy as sa

        url = sa.engine.make_url(settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database:
            identity = "sqlite:" + str(Path(url.database).resolve())
        else:
            identity = url.render_as_string(hide_password=True)
    else:
        vault = settings.vault
        identity = f"vault:{vault.addr if vault else ''}:{vault.secret_path if vault else ''}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _sockets(store: str) -> list[Path]:
    directory = runtime_dir()
    try:
        return sorted(directory.glob(f"{store}-*.sock"))
    except OSError:
        return []


class ControlServer:
    """A mount's control socket: `changed` messages in, an answer once they are handled."""

    def __init__(self, store: str, on_changed: Callable[[Sequence[str]], None]) -> None:
        self.on_changed = on_changed
        directory = runtime_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f"{store}-{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name="secretfs-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(ANSWER_LIMIT * 5)
                if not self._peer_allowed(conn):
                    return
                message = json.loads(_read_line(conn))
                names = [str(n) for n in message.get("names", [])]
                self.on_changed(names)
                conn.sendall(b'{"ok": true}\n')
            except Exception as exc:  # one bad request never takes the daemon down
                log.warning("control request failed: %s", type(exc).__name__)

    @staticmethod
    def _peer_allowed(conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_MESSAGE:
            raise ValueError("message too long")
    return data


def tell_mounts(store: str, names: Sequence[str], *, exclude_pid: int | None = None) -> list[str]:
    """Tell every live mount of the store that these secrets changed; wait for each answer.

    Returns warnings, one per mount that did not answer in time. Sockets whose daemon is gone are
    removed.
    """
    warnings = []
    payload = (json.dumps({"op": "changed", "names": list(names)}) + "\n").encode()
    for path in _sockets(store):
        pid = path.stem.rpartition("-")[2]
        if exclude_pid is not None and pid == str(exclude_pid):
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(ANSWER_LIMIT)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()  # its daemon is gone
            continue
        except OSError as exc:
            warnings.append(f"the mount served by pid {pid} could not be told of the change ({exc.strerror})")
            continue
        try:
            sock.sendall(payload)
            if not _read_line(sock).startswith(b'{"ok"'):
                warnings.append(f"the mount served by pid {pid} did not confirm the change")
        except OSError:
            warnings.append(
                f"the mount served by pid {pid} did not confirm the change within {ANSWER_LIMIT:.0f} s; "
                "it serves the new value within its --cache-ttl"
            )
        finally:
            sock.close()
    return warnings
