"""No leaks over a full session: values are never logged, never written to disk, never in argv or env.

One session with known random marker values (ASCII, unicode, binary, a field of a JSON object):
writes through a mount and through `secretfs put` (stdin and `--file`); reads through the mount,
`get`, `ls` and `status MOUNTPOINT --json`; provoked errors (ENOENT, EFBIG with a marker in the
refused bytes, a tampered row read as EIO, a start with a wrong key, a rotation refused because of
that row); `rotate-key`, then a remount under the new key and every read again.

Then every marker is searched, raw and encoded (JSON-escaped, base64 and URL-safe base64 at every
alignment, UTF-16, hex, Python bytes repr), in: every CLI stderr (and every stdout but `get`'s,
whose job is to print the value), every mount log, the data directory with the SQLite file and its
-wal/-shm/-journal (while mounted and after), `/tmp` recursively, and the daemon's
`/proc/PID/cmdline` and `/proc/PID/environ` while it runs.

`/tmp` is searched on its own filesystem only (not into FUSE or tmpfs mounts below it), regular
files only, skipping exactly the input file of `put --file` (the one place a marker is allowed),
and only files whose inode changed since the markers were created (st_ctime): an older file cannot
hold a value that did not exist yet, and this keeps the walk over a shared `/tmp` bounded.
pytest captures output in unlinked temporary files, so there is nothing of its own to exclude.

Failure messages name markers and encodings, never the marker bytes themselves. The positive
controls at the end show that the same search finds a marker planted in a file under `/tmp`, in
a plaintext row of a database copy, and in a process environment.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretfs import mounts
from secretfs.errors import EXIT_KEY, EXIT_NOT_FOUND, EXIT_USAGE
from tests.support.mount import SECRETFS, Instance, Mounted, base_env, mounted, os_read
from tests.support.wait import wait_until

TMP = Path("/tmp")
CHUNK = 16 << 20
MIB = 1024 * 1024


# ----- the search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    label: str  # which marker
    kind: str  # which encoding of it
    data: bytes


def _b64_forms(marker: bytes) -> dict[str, bytes]:
    """Base64 (standard and URL-safe) of the marker at each of the three alignments it can have
    inside a longer encoded blob: only the characters that depend on the marker's bytes alone."""
    out: dict[str, bytes] = {}
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for pad in range(3):
            total = pad + len(marker)
            encoded = encode(b"\0" * pad + marker)
            out[f"{name}@{pad}"] = encoded[4 if pad else 0 : (total // 3) * 4]
    return out


def forms(marker: bytes) -> dict[str, bytes]:
    """Every byte string under which a marker could be found, by encoding name."""
    out = {"raw": marker, "hex": marker.hex().encode(), **_b64_forms(marker)}
    bytes_repr = repr(marker)[2:-1].encode()
    if bytes_repr != marker:
        out["bytes-repr"] = bytes_repr
    try:
        text = marker.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        out["json-ascii"] = json.dumps(text, ensure_ascii=True)[1:-1].encode()
        out["json-utf8"] = json.dumps(text, ensure_ascii=False)[1:-1].encode()
        out["utf-16-le"] = text.encode("utf-16-le")
        out["utf-16-be"] = text.encode("utf-16-be")
    for kind, data in out.items():
        assert len(data) >= 24, f"form {kind} of a marker is too short to be searched without false hits"
    return out


def needles(markers: dict[str, bytes]) -> list[Needle]:
    """Each distinct form of each marker (an ASCII marker's JSON forms are its raw bytes: searched once)."""
    out: list[Needle] = []
    for label, marker in markers.items():
        distinct: dict[bytes, str] = {}
        for kind, data in forms(marker).items():
            distinct.setdefault(data, kind)
        out += [Needle(label, kind, data) for data, kind in distinct.items()]
    return out


def scan(blob: bytes, where: str, search: Iterable[Needle]) -> list[str]:
    """The markers found in one byte string, as 'label as kind in where' (never the bytes)."""
    return [f"{n.label} as {n.kind} in {where}" for n in search if n.data in blob]


def scan_file(path: Path, search: list[Needle]) -> list[str]:
    """Search a regular file in chunks (overlapping, so a form across a boundary is found).

    Sockets, FIFOs, devices and symlinks are skipped without being opened; an unreadable or
    vanished file is skipped too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    hits: set[str] = set()
    overlap = max(len(n.data) for n in search) - 1
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        tail = b""
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError:
                break
            if not chunk:
                break
            window = tail + chunk
            hits.update(scan(window, str(path), search))
            tail = window[-overlap:]
    finally:
        os.close(fd)
    return sorted(hits)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def tmp_files(root: Path, since: float, exclude: set[Path]) -> Iterator[Path]:
    """Regular files under root, on root's filesystem, changed at or after `since`.

    Mount points below root (other tests' FUSE mounts, which may be stopped) are pruned from the
    mount table without being stat'ed; anything on another device is pruned as well.
    """
    device = os.lstat(root).st_dev
    mountpoints = {Path(entry.mountpoint) for entry in mounts.mount_table()}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        kept = []
        for name in dirnames:
            if here / name in mountpoints:
                continue
            try:
                info = os.lstat(here / name)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            path = here / name
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_ctime >= since and path not in exclude:
                yield path


def scan_tmp(
    search: list[Needle], since: float, exclude: set[Path], seen: dict[Path, tuple[int, ...]] | None = None
) -> tuple[list[str], int]:
    """Hits and the number of files searched. `seen` remembers files already searched (inode,
    size, ctime in ns): a later call skips those that have not changed since."""
    hits: list[str] = []
    count = 0
    for path in tmp_files(TMP, since, exclude):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        identity = (info.st_ino, info.st_size, info.st_ctime_ns)
        if seen is not None:
            if seen.get(path) == identity:
                continue
            seen[path] = identity
        count += 1
        hits.extend(scan_file(path, search))
    return hits, count


def proc_blob(pid: int, what: str) -> bytes:
    return Path(f"/proc/{pid}/{what}").read_bytes()


# ----- the session ------------------------------------------------------------------------------


def make_markers() -> dict[str, bytes]:
    def text(tag: str) -> bytes:
        return f"leak-marker-{tag}-{secrets.token_hex(20)}".encode()

    def unicode(tag: str) -> bytes:
        return f"ünïcødé-日本-🔑-{tag}-{secrets.token_hex(16)}".encode()

    def binary() -> bytes:
        return b"\x00\xff" + secrets.token_bytes(48) + b"\x80\x81"

    return {
        # through `secretfs put`
        "put_ascii": text("put"),
        "put_unicode": unicode("put"),
        "put_binary": binary(),
        "put_json_field": text("put-json"),
        "put_file": unicode("file"),
        "overwritten": text("old"),
        "tampered": text("tampered"),
        # through the mount
        "mount_ascii": text("mount"),
        "mount_append": text("append"),
        "mount_unicode": unicode("mount"),
        "mount_binary": binary(),
        "mount_json_field": text("mount-json"),
        "mount_overwrite": text("new"),
        # refused: over 1 MiB
        "efbig_head": text("efbig-head"),
        "efbig_tail": text("efbig-tail"),
        "efbig_cli": text("efbig-cli"),
    }


def json_object(field: bytes) -> bytes:
    return json.dumps({"user": "svc", "password": field.decode(), "port": 5432}).encode()


@dataclass(repr=False)  # a failing test must not print the markers
class Session:
    markers: dict[str, bytes]
    search: list[Needle]
    captured: list[tuple[str, bytes]]  # (what, bytes) that must hold no marker
    live_hits: list[str]
    tmp_seen: dict[Path, tuple[int, ...]]

    def cli(self, inst: Instance, *args: str, input: bytes | None = None, code: int = 0) -> bytes:
        result = inst.cli(*args, input=input, check=False)
        assert result.returncode == code, f"secretfs {args[0]} exited {result.returncode}, not {code}"
        self.captured.append((f"stderr of secretfs {' '.join(args)}", result.stderr))
        if args[0] != "get":
            self.captured.append((f"stdout of secretfs {' '.join(args)}", result.stdout))
        return result.stdout

    def check_live(self, m: Mounted, data_dir: Path, key_secret: str, since: float, exclude: set[Path]) -> None:
        """While the daemon runs: its argv and environment, the database files, and /tmp."""
        pid = m.proc.pid
        cmdline, environ = proc_blob(pid, "cmdline"), proc_blob(pid, "environ")
        # Controls: these are the daemon's own argv and environment.
        assert str(m.path).encode() in cmdline
        assert f"ARCHESTRA_SECRETS_ENCRYPTION_SECRET={key_secret}".encode() in environ.split(b"\0")
        self.live_hits += scan(cmdline, f"/proc/{pid}/cmdline", self.search)
        self.live_hits += scan(environ, f"/proc/{pid}/environ", self.search)
        names = {p.name for p in files_under(data_dir)}
        assert {"secretfs.db", "secretfs.db-wal"} <= names, names
        for path in files_under(data_dir):
            self.live_hits += scan_file(path, self.search)
        self.live_hits += scan_tmp(self.search, since, exclude, self.tmp_seen)[0]


def same(actual: bytes, expected: bytes, what: str) -> None:
    """Compare values without printing them if they differ."""
    assert actual == expected, f"{what}: got {len(actual)} bytes, expected {len(expected)} (values not shown)"


def read_errno(path: Path) -> int:
    with pytest.raises(OSError) as info:
        os_read(path)
    return int(info.value.errno or 0)


def write_errno(path: Path, data: bytes) -> int:
    with pytest.raises(OSError) as info, open(path, "wb") as handle:
        handle.write(data)
    return int(info.value.errno or 0)


def tamper(db_path: Path, name: str) -> None:
    """Flip one character of the row's ciphertext (a valid base64url character: still well formed)."""
    db = sqlite3.connect(db_path)
    try:
        with db:
            (raw,) = db.execute("SELECT secret FROM secret WHERE name = ?", (name,)).fetchone()
            envelope = json.loads(raw)
            version, iv, tag, ct = envelope["__encrypted"].split(":")
            flipped = ("B" if ct[0] != "B" else "C") + ct[1:]
            envelope["__encrypted"] = ":".join((version, iv, tag, flipped))
            db.execute("UPDATE secret SET secret = ? WHERE name = ?", (json.dumps(envelope), name))
    finally:
        db.close()


@pytest.mark.mount
def test_full_session_leaves_no_marker_anywhere(tmp_path: Path) -> None:
    since = time.time() - 2  # before any marker exists (margin for timestamp granularity)
    markers = make_markers()
    session = Session(markers, needles(markers), [], [], {})
    cli = session.cli
    data = tmp_path / "data"
    key1, key2 = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    inst1 = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=key1))
    inst2 = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=key2))
    rotating = Instance(
        data,
        base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=key2, ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS=key1),
    )
    wrong = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secrets.token_urlsafe(24)))
    input_file = tmp_path / "input" / "value.txt"  # the one place a marker may be on disk
    input_file.parent.mkdir()
    input_file.write_bytes(markers["put_file"])
    allowed = {input_file}

    # What each file shows once the session's writes are done.
    expected = {
        "put/ascii": markers["put_ascii"],
        "put/unicode": markers["put_unicode"],
        "put/binary": markers["put_binary"],
        "put/file": markers["put_file"],
        "m/ascii": markers["mount_ascii"] + markers["mount_append"],
        "m/unicode": markers["mount_unicode"],
        "m/sub/binary": markers["mount_binary"],
        "overwrite": markers["mount_overwrite"],
    }
    json_files = {"put/json": markers["put_json_field"], "m/json": markers["mount_json_field"]}

    def read_all(m: Mounted, inst: Instance) -> None:
        """Every file through the mount and `secretfs get` (the CLI calls run 4 at a time), `ls`, `status`."""
        for name, value in expected.items():
            same(os_read(m.path / name), value, f"{name} through the mount")
        for name, field in json_files.items():
            assert json.loads(os_read(m.path / name))["password"] == field.decode(), f"{name}: JSON field differs"
        with ThreadPoolExecutor(4) as pool:
            names = [*expected, *json_files]
            got = dict(zip(names, pool.map(lambda n: cli(inst, "get", n), names), strict=True))
            stored = pool.submit(cli, inst, "get", "--json", "m/unicode")
            listed = pool.submit(cli, inst, "ls")
            status = pool.submit(cli, inst, "status", str(m.path), "--json")
        for name, value in expected.items():
            same(got[name], value, f"secretfs get {name}")
        for name, field in json_files.items():
            assert json.loads(got[name])["password"] == field.decode(), f"get {name}: JSON field differs"
        assert json.loads(stored.result()) == {"value": markers["mount_unicode"].decode()}
        assert set(expected) | set(json_files) <= set(listed.result().decode().split())
        report = json.loads(status.result())
        assert report["mount"]["live"] and report["mount"]["daemon"]["pid"] == m.proc.pid

    # --- writes through `secretfs put`: stdin and --file ---
    cli(inst1, "put", "-vv", "put/ascii", input=markers["put_ascii"])
    cli(inst1, "put", "put/unicode", input=markers["put_unicode"])
    cli(inst1, "put", "put/binary", input=markers["put_binary"])
    cli(inst1, "put", "put/json", input=json_object(markers["put_json_field"]))
    cli(inst1, "put", "-vv", "put/file", "--file", str(input_file))
    cli(inst1, "put", "overwrite", input=markers["overwritten"])
    cli(inst1, "put", "tampered", input=markers["tampered"])

    # --- mount 1: writes, reads, ENOENT, EFBIG ---
    with mounted(inst1, tmp_path / "mnt1", "-vv") as m:
        (m.path / "m" / "sub").mkdir(parents=True)
        (m.path / "m" / "ascii").write_bytes(markers["mount_ascii"])
        with open(m.path / "m" / "ascii", "ab") as f:
            f.write(markers["mount_append"])
        (m.path / "m" / "unicode").write_bytes(markers["mount_unicode"])
        (m.path / "m" / "sub" / "binary").write_bytes(markers["mount_binary"])
        (m.path / "m" / "json").write_bytes(json_object(markers["mount_json_field"]))
        same(os_read(m.path / "overwrite"), markers["overwritten"], "overwrite before")
        (m.path / "overwrite").write_bytes(markers["mount_overwrite"])
        read_all(m, inst1)
        # ENOENT, through the mount and the CLI.
        assert read_errno(m.path / "missing") == errno.ENOENT
        cli(inst1, "get", "missing", code=EXIT_NOT_FOUND)
        # EFBIG: over 1 MiB, markers in the accepted head and in the refused tail.
        big = markers["efbig_head"] + b"x" * MIB + markers["efbig_tail"]
        assert write_errno(m.path / "big", big) == errno.EFBIG
        assert not (m.path / "big").exists()
        cli(inst1, "put", "big", input=markers["efbig_cli"] + b"y" * MIB, code=EXIT_USAGE)
        cli(inst1, "get", "big", code=EXIT_NOT_FOUND)
        session.check_live(m, data, key1, since, allowed)

    # --- a tampered row: EIO for that file alone, and a log naming it (never its value) ---
    tamper(data / "secretfs.db", "tampered")
    with mounted(inst1, tmp_path / "mnt2", "-vv") as m:
        assert read_errno(m.path / "tampered") == errno.EIO
        same(os_read(m.path / "put/ascii"), markers["put_ascii"], "put/ascii beside the tampered row")
        cli(inst1, "get", "tampered", code=EXIT_KEY)
        session.check_live(m, data, key1, since, allowed)
    log2 = (tmp_path / "mnt2.log").read_text()
    assert "'tampered'" in log2 and "cannot be decrypted" in log2  # control: this log is the daemon's

    # --- a wrong key refuses to start (exit 5), the database unchanged ---
    before = hashlib.sha256((data / "secretfs.db").read_bytes()).hexdigest()
    (tmp_path / "mnt-wrong").mkdir()
    with open(tmp_path / "mnt-wrong.log", "wb") as out:
        started = subprocess.run(
            [*SECRETFS, "mount", "-f", str(tmp_path / "mnt-wrong"), "-vv"],
            env=wrong.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    assert started.returncode == EXIT_KEY
    cli(wrong, "get", "put/ascii", code=EXIT_KEY)
    assert hashlib.sha256((data / "secretfs.db").read_bytes()).hexdigest() == before

    # --- key rotation: refused while a row decrypts under neither key, then done ---
    cli(rotating, "rotate-key", "-vv", code=EXIT_KEY)
    cli(inst1, "rm", "tampered")
    result = json.loads(cli(rotating, "rotate-key", "-vv", "--json"))
    assert result["reencrypted"] == len(expected) + len(json_files) and result["canary_refreshed"]
    cli(inst1, "get", "put/ascii", code=EXIT_KEY)  # the old key alone is refused now

    # --- mount 3, under the new key: every read again ---
    with mounted(inst2, tmp_path / "mnt3", "-vv") as m:
        read_all(m, inst2)
        session.check_live(m, data, key2, since, allowed)

    # --- after: logs, captured output, the data directory and database files, /tmp ---
    logs = sorted(tmp_path.glob("*.log"))
    assert {p.name for p in logs} == {"mnt1.log", "mnt2.log", "mnt3.log", "mnt-wrong.log"}
    assert b"mounted at" in (tmp_path / "mnt1.log").read_bytes()  # -vv: INFO lines are there
    hits = list(session.live_hits)
    for what, blob in session.captured:
        hits += scan(blob, what, session.search)
    for path in logs:
        hits += scan_file(path, session.search)
    db_files = [data / f"secretfs.db{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    assert db_files[0].exists()
    for path in [*db_files, *files_under(data)]:
        if path.exists():
            hits += scan_file(path, session.search)
    tmp_hits, searched = scan_tmp(session.search, since, allowed, session.tmp_seen)
    hits += tmp_hits
    assert searched >= 1  # mnt3.log at least changed since the last live search
    # Control: the /tmp walk reached this test's own files (logs, database), the input file aside.
    walked = set(session.tmp_seen)
    assert set(logs) <= walked and db_files[0] in walked and input_file not in walked
    assert hits == [], "values leaked:\n" + "\n".join(sorted(set(hits)))
    # The input file is excluded because it holds a marker: the search does see it.
    assert scan_file(input_file, session.search)


# ----- positive controls: the same search finds markers that are there --------------------------


def test_search_finds_markers_planted_in_tmp(tmp_path: Path) -> None:
    since = time.time() - 2
    markers = make_markers()
    search = needles(markers)
    planted = tmp_path / "planted"
    planted.mkdir()
    ascii_marker, unicode_marker, binary_marker = markers["put_ascii"], markers["put_unicode"], markers["put_binary"]
    (planted / "raw.log").write_bytes(b"INFO: value=" + ascii_marker + b"\n")
    (planted / "escaped.json").write_text(json.dumps({"v": unicode_marker.decode()}))  # \uXXXX escapes
    (planted / "utf8.json").write_text(json.dumps({"v": unicode_marker.decode()}, ensure_ascii=False))
    # Inside a larger base64 blob, at an offset that is not a multiple of 3.
    (planted / "blob.b64").write_bytes(base64.b64encode(b"ab" + binary_marker + b"cd"))
    # All-ones bytes encode to "/" (standard) and "_" (URL-safe) at every alignment: the two differ.
    markers["urlsafe"] = b"\xff" * 12 + secrets.token_bytes(36)
    search = needles(markers)
    (planted / "blob.b64url").write_bytes(base64.urlsafe_b64encode(b"a" + markers["urlsafe"] + b"z"))
    (planted / "wide.txt").write_bytes(("x" + unicode_marker.decode()).encode("utf-16-le"))
    (planted / "repr.txt").write_text(f"failed: {binary_marker!r}")
    # Across a chunk boundary of the reader.
    (planted / "big.bin").write_bytes(b"\0" * (CHUNK - 10) + markers["mount_ascii"] + b"\0" * 10)
    exclude = {planted / "excluded"}
    (planted / "excluded").write_bytes(markers["mount_unicode"])
    os.mkfifo(planted / "fifo")  # skipped, never opened (opening it would block)

    hits, searched = scan_tmp(search, since, exclude)
    found = {h.split(" in ")[0] for h in hits if h.endswith(tuple(str(p) for p in planted.iterdir()))}
    assert searched >= 8
    for expected in (
        "put_ascii as raw",
        "put_unicode as json-ascii",
        "put_unicode as raw",
        "put_binary as base64@2",
        "urlsafe as base64url@1",
        "put_unicode as utf-16-le",
        "put_binary as bytes-repr",
        "mount_ascii as raw",
    ):
        assert expected in found, (expected, sorted(found))
    assert not any(h.startswith("mount_unicode ") for h in hits)  # the excluded file only
    # A file older than `since` is not read: it cannot hold a marker made after it.
    assert scan_tmp(search, time.time() + 60, set()) == ([], 0)


def test_search_finds_a_plaintext_row_in_a_database_copy(tmp_path: Path) -> None:
    markers = make_markers()
    data = tmp_path / "data"
    inst = Instance(data, base_env(data, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=secrets.token_urlsafe(24)))
    inst.cli("put", "seed", input=markers["put_ascii"])
    assert scan_file(data / "secretfs.db", needles(markers)) == []  # encrypted: not found
    copy = tmp_path / "copy.db"
    shutil.copy(data / "secretfs.db", copy)
    rows = {
        "ascii": {"value": markers["mount_ascii"].decode()},
        "unicode": {"value": markers["mount_unicode"].decode()},  # json.dumps escapes non-ASCII
        "binary": {"value": base64.b64encode(markers["mount_binary"]).decode(), "encoding": "base64"},
        "object": {"user": "svc", "password": markers["mount_json_field"].decode()},
    }
    conn = sqlite3.connect(copy)
    try:
        with conn:
            for name, value in rows.items():
                conn.execute(
                    "INSERT INTO secret (id, name, secret, is_vault, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
                    (str(uuid.uuid4()), name, json.dumps(value), "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
                )
    finally:
        conn.close()
    hits = scan_file(copy, needles(markers))
    for label in ("mount_ascii", "mount_unicode", "mount_binary", "mount_json_field"):
        assert any(h.startswith(f"{label} as ") for h in hits), (label, hits)
    assert not any(h.startswith("put_ascii ") for h in hits)


def test_search_finds_a_marker_in_a_process_environment(tmp_path: Path) -> None:
    marker = make_markers()["put_unicode"]
    proc = subprocess.Popen(["sleep", "30"], env={"LEAKED": marker.decode()})
    try:
        # Popen returns once exec has begun; the new image's environment is readable a moment later.
        environ = wait_until(lambda: proc_blob(proc.pid, "environ"), 10, interval=0.01, message="no environ")
        hits = scan(environ, "environ", needles({"m": marker}))
        hits += scan(proc_blob(os.getpid(), "cmdline"), "cmdline", needles({"m": marker}))
    finally:
        proc.kill()
        proc.wait()
    assert "m as raw in environ" in hits
    assert not any(h.endswith(" in cmdline") for h in hits)
