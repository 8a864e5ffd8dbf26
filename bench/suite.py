"""bench/run: the secretfs benchmark suite (issue 6, item 3). Not a test: it measures and reports.

Sections, each against baselines measured in the same run:
  a. warm read: open+read+close of a 64-byte secret in a tight loop (a C client, compiled here),
     secretfs over SQLite and Vault in each cache mode, read-only and writable, against a file on
     tmpfs and a minimal mfusepy filesystem serving one constant file with direct_io;
  b. cold read (value cache off, direct mode) over SQLite, PostgreSQL and Vault, against the same
     store read directly in Python (SQLAlchemy select + decrypt; an hvac GET);
  c. scale: 1k/10k/100k secrets: time to ready, `ls`, `ls -l`, daemon RSS;
  d. concurrency: warm-read throughput with 1, 4 and 16 reader threads;
  e. write: open(O_TRUNC)+write+close (what `printf … > file` does) over SQLite and Vault;
  f. freshness: time from a change made outside the mount until a read returns it, and the same
     for OpenBao Agent rendering the secret with a template at its default settings;
  g. propagation: read-your-writes on one host, and changes pushed between hosts;
  h. telling applications (issue 12): time from a change outside the mount until an inotify watch
     on the secret's directory gets IN_CLOSE_WRITE, and until an on-change action's command runs,
     against OpenBao Agent running its template `exec` command at default settings.

The tables go to stdout and, between markers, into docs/performance.md. Servers, mounts and temporary
directories are always cleaned up, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mount import Instance, force_unmount, make_instance, mounted

DOC = REPO / "docs" / "performance.md"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
VALUE = "s" * 64  # the 64-byte secret
TTL = 5.0  # secretfs's default --cache-ttl
SECRET = "ARCHESTRA_SECRETS_ENCRYPTION_SECRET"
SECRETFS = [sys.executable, "-m", "secretfs"]


# ----- plumbing ----------------------------------------------------------------------------------


@dataclass
class Counts:
    warm: int
    warm_slow: int
    cold: int
    seconds: float  # per throughput point
    writes: int
    fresh_rounds: int
    scale: list[int]
    agent_wait: float  # how long to wait for the agent to render a change
    rounds: int = 5  # interleaved rounds for warm reads and throughput
    events: int = 10  # h: changes per measured path

    @staticmethod
    def make(mode: str, scale: list[int] | None) -> Counts:
        if mode == "smoke":
            counts = Counts(300, 100, 50, 0.3, 20, 1, [200], 0.0, rounds=2, events=2)
        elif mode == "quick":
            counts = Counts(3000, 1000, 300, 0.7, 50, 2, [1000, 10_000], 20.0, events=5)
        else:
            counts = Counts(20_000, 5000, 2000, 2.0, 300, 3, [1000, 10_000, 100_000], 330.0, events=10)
        if scale:
            counts.scale = scale
        return counts


@dataclass
class Results:
    """Everything measured, and the rendered tables."""

    warm: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (median µs, p99 µs)
    cold: dict[str, float] = field(default_factory=dict)  # label -> median µs
    scale: dict[int, dict[str, float]] = field(default_factory=dict)
    threads: dict[str, dict[int, float]] = field(default_factory=dict)  # label -> {threads: ops/s}
    write: dict[str, float] = field(default_factory=dict)
    fresh: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds per round
    # g: label -> (stale first reads, or None where the write is not awaited; rounds; seconds per
    # round until the new value was read)
    propagation: dict[str, tuple[int | None, int, list[float]]] = field(default_factory=dict)
    # h: label -> seconds per round from the change to the inotify event or the action's command
    events: dict[str, list[float]] = field(default_factory=dict)
    events_stale: int = 0  # h: reads right after an event that did not return the new value
    # h: OpenBao Agent's template command: (seconds from the change, or None; seconds waited)
    agent_command: tuple[float | None, float] | None = None
    # i: label -> (median µs, p99 µs) of a warm open+read+close with a policy or an audit log
    policy: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compile_client(workdir: Path) -> Path:
    binary = workdir / "readloop"
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(binary), str(REPO / "bench" / "readloop.c")],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


class Client:
    """The C timing client."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def _run(self, *args: str) -> list[float]:
        out = subprocess.run([str(self.binary), *args], check=True, capture_output=True, text=True, timeout=600)
        return [float(x) for x in out.stdout.split()]

    def latency(self, path: Path, n: int) -> tuple[float, float]:
        """(median µs, p99 µs) of open+read+close."""
        median, p99, _mean = self._run("lat", str(path), str(n))
        return median / 1000, p99 / 1000

    def samples(self, path: Path, n: int) -> list[float]:
        """Every open+read+close time, µs."""
        return [x / 1000 for x in self._run("samples", str(path), str(n))]

    def throughput(self, path: Path, threads: int, seconds: float) -> float:
        return self._run("thr", str(path), str(threads), str(seconds))[0]

    def write(self, path: Path, n: int) -> tuple[float, float]:
        median, p99, _mean = self._run("write", str(path), str(n))
        return median / 1000, p99 / 1000


def warm_up(path: Path, times: int = 3) -> None:
    for _ in range(times):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 4096)
        finally:
            os.close(fd)


def read_bytes(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


@contextlib.contextmanager
def minimal_fs(root: Path) -> Iterator[Path]:
    """The baseline mfusepy direct_io filesystem, mounted; yields its one file."""
    mountpoint = root / "minimal"
    mountpoint.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "minimalfs.py"), str(mountpoint), str(len(VALUE))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (mountpoint / "secret").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the minimal filesystem did not mount")
            time.sleep(0.02)
        yield mountpoint / "secret"
    finally:
        subprocess.run(["fusermount3", "-u", "-q", str(mountpoint)], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            subprocess.run(["fusermount3", "-u", "-z", "-q", str(mountpoint)], check=False, capture_output=True)


@contextlib.contextmanager
def tmpfs_dir(root: Path) -> Iterator[Path]:
    """A directory on tmpfs: a private tmpfs mount when root, else one under /dev/shm."""
    target = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=root))
    if (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(target)], check=False).returncode
        == 0
    ):
        try:
            yield target
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
        return
    shm = Path(tempfile.mkdtemp(prefix="secretfs-bench-", dir="/dev/shm"))
    try:
        yield shm
    finally:
        shutil.rmtree(shm, ignore_errors=True)


# ----- the stores --------------------------------------------------------------------------------


@dataclass
class Backend:
    """A store configuration that secretfs mounts and that the baselines read directly."""

    label: str
    instance: Instance
    kind: str  # sqlite | pg | vault
    bao: Any = None

    def put(self, name: str, value: str) -> None:
        self.instance.cli("put", name, input=value.encode())

    def settings(self) -> Any:
        from secretfs.config import load_settings

        return load_settings(self.instance.env, data_dir=self.instance.data_dir)


def sqlite_backend(root: Path) -> Backend:
    return Backend("SQLite", make_instance(root / "sqlite"), "sqlite")


def pg_backend(root: Path, server: Any) -> Backend:
    return Backend("PostgreSQL", make_instance(root / "pg", ARCHESTRA_DATABASE_URL=server.database_url), "pg")


def vault_backend(root: Path, bao: Any) -> Backend:
    instance = make_instance(
        root / "vault",
        ARCHESTRA_SECRETS_MANAGER="VAULT",
        ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED="true",
        ARCHESTRA_HASHICORP_VAULT_ADDR=bao.addr,
        ARCHESTRA_HASHICORP_VAULT_TOKEN="root",
    )
    return Backend("Vault", instance, "vault", bao)


def direct_store_reader(backend: Backend, name: str) -> Callable[[], Any]:
    """The baseline: one read of the secret straight from the store, in Python."""
    if backend.kind == "vault":
        import hvac

        client = hvac.Client(url=backend.bao.addr, token="root")
        path = f"secret/data/archestra/{name}"
        return lambda: client.read(path)["data"]["data"]
    import sqlalchemy as sa

    from secretfs import crypto
    from secretfs.stores.sql import secret_table

    settings = backend.settings()
    secret = settings.encryption_secret
    assert secret is not None
    key = crypto.derive_key(secret)
    engine = sa.create_engine(settings.database_url)
    stmt = sa.select(secret_table.c.secret).where(secret_table.c.name == sa.bindparam("name"))

    def read() -> Any:
        with engine.connect() as conn:
            stored = conn.execute(stmt, {"name": name}).scalar_one()
        return crypto.decrypt(key, stored)

    return read


def time_python(fn: Callable[[], Any], n: int) -> float:
    """Median µs of fn()."""
    fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


# ----- a, d: warm reads and concurrency ----------------------------------------------------------

MODES: list[tuple[str, str, list[str]]] = [
    ("kernel", "read-only", ["--cache-mode", "kernel", "--read-only"]),
    ("kernel", "writable", ["--cache-mode", "kernel"]),
    ("direct", "read-only", ["--cache-mode", "direct", "--read-only"]),
    ("direct", "writable", ["--cache-mode", "direct"]),
]
THREADS = (1, 4, 16)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_warm(
    root: Path, client: Client, counts: Counts, backends: list[Backend], results: Results, with_threads: bool
) -> None:
    """Every configuration mounted at once, measured in interleaved rounds (the machine may be shared:
    interleaving spreads any background load evenly over the configurations compared)."""
    rounds = counts.rounds
    with contextlib.ExitStack() as stack:
        shm = stack.enter_context(tmpfs_dir(root))
        (shm / "secret").write_text(VALUE)
        paths: dict[str, Path] = {"tmpfs": shm / "secret", "minimal": stack.enter_context(minimal_fs(root))}
        slow: set[str] = {"minimal"}
        for backend in backends:
            backend.put("bench/warm", VALUE)
            for index, (mode, access, args) in enumerate(MODES):
                label = f"{backend.label} {mode} {access}"
                m = stack.enter_context(mounted(backend.instance, root / f"mnt-{backend.kind}-{index}", *args))
                paths[label] = m.path / "bench" / "warm"
                if (mode, access) != ("kernel", "read-only"):
                    slow.add(label)
        for path in paths.values():
            warm_up(path)
        samples: dict[str, list[float]] = {label: [] for label in paths}
        labels = list(paths)
        for r in range(rounds):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                n = (counts.warm_slow if label in slow else counts.warm) // rounds
                samples[label] += client.samples(paths[label], max(n, 10))
        for label in labels:
            results.warm[label] = (statistics.median(samples[label]), percentile(samples[label], 0.99))
            log(f"{label}: {results.warm[label]}")
        if not with_threads:
            return
        threaded = [label for label in labels if label in ("tmpfs", "minimal") or label.startswith("SQLite")]
        ops: dict[str, dict[int, float]] = {label: dict.fromkeys(THREADS, 0.0) for label in threaded}
        for r in range(rounds):
            for label in threaded[r % len(threaded) :] + threaded[: r % len(threaded)]:
                for t in THREADS:
                    ops[label][t] += client.throughput(paths[label], t, counts.seconds / rounds) / rounds
        for label in threaded:
            results.threads[label.removeprefix("SQLite ")] = ops[label]


# ----- i: policy and audit log ------------------------------------------------------------------


def bench_policy(root: Path, client: Client, counts: Counts, backend: Backend, results: Results) -> None:
    """Warm opens with a readers rule (checked at every open) and with an audit log, against the same
    mounts without: every configuration mounted at once, measured in interleaved rounds."""
    backend.put("bench/policy", VALUE)
    policy = root / "policy.toml"
    readers = f'uids = [0]\nexe = ["{client.binary.resolve()}"]'
    policy.write_text(f'[[rule]]\nsecrets = ["bench/*"]\n[rule.readers]\n{readers}\n')
    policy.chmod(0o600)
    uids_only = root / "policy-uids.toml"
    uids_only.write_text('[[rule]]\nsecrets = ["bench/*"]\n[rule.readers]\nuids = [0]\n')
    uids_only.chmod(0o600)
    configs = {
        "kernel writable, no policy": [],
        "kernel writable, readers rule": ["--policy", str(policy)],
        "kernel writable, readers rule (uids only: no /proc)": ["--policy", str(uids_only)],
        "kernel writable, audit log": ["--audit-log", str(root / "audit.log")],
        "kernel writable, readers rule and audit log": ["--policy", str(policy), "--audit-log", str(root / "a2.log")],
        "kernel read-only, no policy": ["--read-only"],
        "kernel read-only, readers rule": ["--read-only", "--policy", str(policy)],
    }
    with contextlib.ExitStack() as stack:
        paths = {}
        for index, (label, args) in enumerate(configs.items()):
            m = stack.enter_context(mounted(backend.instance, root / f"mnt-policy-{index}", *args))
            paths[label] = m.path / "bench" / "policy"
            client.samples(paths[label], 50)  # warm: the client is the one executable the rule allows
        samples: dict[str, list[float]] = {label: [] for label in paths}
        labels = list(paths)
        for r in range(counts.rounds):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                samples[label] += client.samples(paths[label], max(counts.warm_slow // counts.rounds, 10))
        for label in labels:
            results.policy[label] = (statistics.median(samples[label]), percentile(samples[label], 0.99))
            log(f"{label}: {results.policy[label]}")


# ----- b: cold reads -----------------------------------------------------------------------------


def bench_cold(root: Path, client: Client, counts: Counts, backends: list[Backend], results: Results) -> None:
    for backend in backends:
        backend.put("bench/cold", VALUE)
        results.cold[f"{backend.label} direct store read"] = time_python(
            direct_store_reader(backend, "bench/cold"), counts.cold
        )
        with mounted(backend.instance, root / "mnt-cold", "--cache-mode", "direct", "--cache-ttl", "0") as m:
            path = m.path / "bench" / "cold"
            warm_up(path)
            results.cold[f"{backend.label} secretfs"] = client.latency(path, counts.cold)[0]
        log(f"cold {backend.label}: {results.cold}")


# ----- c: scale ----------------------------------------------------------------------------------


def populate(backend: Backend, total: int) -> None:
    """Make the SQLite store hold secrets s0000000 .. s{total-1}, inserting only what is missing."""
    import uuid

    import sqlalchemy as sa

    from secretfs import crypto
    from secretfs.stores.sql import secret_table
    from secretfs.stores.sql_setup import open_sql_store

    store = open_sql_store(backend.settings())
    try:
        with store.engine.connect() as conn:
            have = conn.execute(sa.select(sa.func.count()).select_from(secret_table)).scalar_one()
        key = store._key
        now = time.time()
        batch: list[dict[str, Any]] = []
        with store.engine.begin() as conn:
            for i in range(max(0, have - 1), total):  # the key canary is one row
                batch.append(
                    {
                        "id": str(uuid.uuid4()),
                        "name": f"s{i:07d}",
                        "secret": crypto.encrypt(key, {"value": f"{i:064d}"}),
                        "is_vault": False,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                if len(batch) >= 5000:
                    conn.execute(sa.insert(secret_table), batch)
                    batch = []
            if batch:
                conn.execute(sa.insert(secret_table), batch)
    finally:
        store.close()


def daemon_pid(mountpoint: Path) -> int | None:
    needle = str(mountpoint).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"secretfs" in cmdline and b"--foreground" in cmdline and needle in cmdline.split(b"\0"):
            return int(entry.name)
    return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env, timeout=600)
    return time.perf_counter() - start


def bench_scale(root: Path, counts: Counts, results: Results) -> None:
    backend = Backend("SQLite", make_instance(root / "scale"), "sqlite")
    backend.put("warmup", "x")
    mountpoint = root / "mnt-scale"
    mountpoint.mkdir()
    for total in counts.scale:
        populate(backend, total)
        pid = None
        try:
            ready = timed([*SECRETFS, "mount", str(mountpoint)], env=backend.instance.env)
            pid = daemon_pid(mountpoint)
            ls = timed(["ls", str(mountpoint)])
            ls_l = timed(["ls", "-l", str(mountpoint)])
            rss = rss_mb(pid) if pid else float("nan")
        finally:
            force_unmount(mountpoint)
            if pid is not None:
                deadline = time.monotonic() + 10
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        results.scale[total] = {"ready": ready, "ls": ls, "ls_l": ls_l, "rss": rss}
        log(f"scale {total}: {results.scale[total]}")


# ----- e: writes ---------------------------------------------------------------------------------


def bench_write(root: Path, client: Client, counts: Counts, backends: list[Backend], results: Results) -> None:
    with tmpfs_dir(root) as shm:
        results.write["tmpfs"] = client.write(shm / "w", counts.writes * 10)[0]
    for backend in backends:
        backend.put("bench/write", VALUE)
        settings = backend.settings()
        from secretfs.stores import open_store

        store = open_store(settings)
        try:
            results.write[f"{backend.label} direct store write"] = time_python(
                functools.partial(store.write, "bench/direct-write", {"value": VALUE}), counts.writes
            )
        finally:
            store.close()
        for mode in ("kernel", "direct"):
            with mounted(backend.instance, root / "mnt-write", "--cache-mode", mode) as m:
                results.write[f"{backend.label} {mode}"] = client.write(m.path / "bench" / "write", counts.writes)[0]
        log(f"write {backend.label}: {results.write}")


# ----- f: freshness ------------------------------------------------------------------------------

WRITER = """
import sys, time
from secretfs.config import load_settings
from secretfs.stores.sql_setup import open_sql_store
store = open_sql_store(load_settings())
store.write(sys.argv[1], {"value": sys.argv[2]})
print(time.time(), flush=True)
store.close()
"""


def change_sqlite(backend: Backend, name: str, value: str) -> float:
    """Change a secret from another process; the wall-clock time of its commit."""
    out = subprocess.run(
        [sys.executable, "-c", WRITER, name, value],
        env=backend.instance.env,
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return float(out.stdout.split()[-1])


def parse_rfc3339(text: str) -> float:
    # 2024-05-01T10:11:12.123456789Z: Python parses at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def change_vault(bao: Any, name: str, value: str) -> float:
    """`bao kv put`; the server's created_time of the new version."""
    out = bao.cli("kv", "put", "-format=json", "-mount=secret", f"archestra/{name}", f"value={value}")
    return parse_rfc3339(json.loads(out.stdout)["data"]["created_time"])


def wait_for(path: Path, expected: bytes, timeout: float, interval: float = 0.001) -> float | None:
    """Poll until path reads expected; the wall-clock time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if read_bytes(path) == expected:
                return time.time()
        except OSError:
            pass
        time.sleep(interval)
    return None


def bench_fresh(root: Path, counts: Counts, backends: list[Backend], results: Results) -> None:
    for backend in backends:
        if backend.kind == "pg":
            continue
        for mode in ("kernel", "direct"):
            label = f"{backend.label} {mode}"
            name = f"bench/fresh-{mode}"
            backend.put(name, "A" * 64)
            seen: list[float] = []
            with mounted(backend.instance, root / "mnt-fresh", "--cache-mode", mode, "--read-only") as m:
                path = m.path / name
                current = "A" * 64
                warm_up(path)
                for i in range(counts.fresh_rounds):
                    new = ("B" if i % 2 == 0 else "A") * 64  # same size: only an invalidation shows it
                    time.sleep(0.3)
                    if backend.kind == "vault":
                        changed_at = change_vault(backend.bao, name, new)
                    else:
                        changed_at = change_sqlite(backend, name, new)
                    visible = wait_for(path, new.encode(), TTL * 4)
                    seen.append(float("inf") if visible is None else max(0.0, visible - changed_at))
                    current = new
                    del current
            results.fresh[label] = seen
            log(f"fresh {label}: {seen}")


# ----- g. propagation: read-your-writes on one host, push between hosts -----------------------------


def elsewhere(instance: Instance, root: Path, label: str) -> Instance:
    """The same store seen from "another host": its own data and runtime directories."""
    data = root / f"host-{label}"
    env = {**instance.env, "SECRETFS_DATA_DIR": str(data), "SECRETFS_RUNTIME_DIR": str(root / f"run-{label}")}
    return dataclasses.replace(instance, data_dir=data, env=env)


def put_then_read(writer: Instance, path: Path, name: str, rounds: int) -> tuple[int | None, int, list[float]]:
    """`put`, then read at once and until the value shows: (stale first reads, rounds, lags)."""
    stale, lags = 0, []
    for i in range(rounds):
        value = f"round-{i}-" + "x" * (i % 7) * 600
        writer.cli("put", name, input=value.encode())
        returned = time.time()
        if read_bytes(path) != value.encode():
            stale += 1
        seen = wait_for(path, value.encode(), TTL * 3)
        lags.append(float("inf") if seen is None else max(0.0, seen - returned))
    return stale, rounds, lags


def plain_sql_writer(url: str, secret: str) -> Callable[[str, str], None]:
    import psycopg
    import sqlalchemy as sa

    from secretfs import crypto

    key = crypto.derive_key(secret)
    conninfo = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def write(name: str, value: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "UPDATE secret SET secret = %s::jsonb, updated_at = now() WHERE name = %s",
                (json.dumps(crypto.encrypt(key, {"value": value})), name),
            )

    return write


def bench_propagation(root: Path, counts: Counts, backends: list[Backend], results: Results) -> None:
    rounds = max(5, counts.fresh_rounds * 10)
    for backend in backends:
        name = "bench/propagate"
        backend.put(name, "start")
        with mounted(backend.instance, root / "mnt-prop", "--cache-ttl", str(TTL)) as m:
            path = m.path / name
            warm_up(path)
            results.propagation[f"{backend.label}: put, then read (this host)"] = put_then_read(
                backend.instance, path, name, rounds
            )
            if backend.kind == "pg":
                # Host B: its own data and runtime directories; a write on host A reaches it by NOTIFY.
                results.propagation["PostgreSQL: put on host A, read on host B"] = put_then_read(
                    elsewhere(backend.instance, root, "a"), path, name, rounds
                )
                write = plain_sql_writer(backend.instance.env["ARCHESTRA_DATABASE_URL"], backend.instance.env[SECRET])
                backend.instance.cli("pg-trigger", "install")
                lags = []
                for i in range(rounds):
                    value = f"plain-{i}"
                    write(name, value)
                    changed = time.time()
                    seen = wait_for(path, value.encode(), TTL * 3)
                    lags.append(float("inf") if seen is None else max(0.0, seen - changed))
                results.propagation["PostgreSQL: plain SQL on host A (trigger), read on host B"] = (None, rounds, lags)
                backend.instance.cli("pg-trigger", "remove")
        log(f"g {backend.label}: {[(k, v[0], max(v[2])) for k, v in results.propagation.items()]}")
    # The TTL path, for comparison: a mount on "another host" that nothing tells (Vault has no change
    # events): a change shows when the entry and the cached value expire.
    for backend in backends:
        if backend.kind != "vault":
            continue
        name = "bench/propagate-ttl"
        backend.put(name, "start")
        with mounted(elsewhere(backend.instance, root, "b"), root / "mnt-ttl", "--cache-ttl", str(TTL)) as m:
            path = m.path / name
            warm_up(path)
            results.propagation["Vault: put on host A, read on host B (the TTL path)"] = put_then_read(
                backend.instance, path, name, max(3, counts.fresh_rounds * 2)
            )


AGENT_CONFIG = """
pid_file = "{dir}/agent.pid"
vault {{
  address = "{addr}"
}}
auto_auth {{
  method "token_file" {{
    config {{
      token_file_path = "{dir}/token"
    }}
  }}
}}
template {{
  destination = "{dest}"
  contents = "{{{{ with secret \\"secret/data/archestra/bench/agent\\" }}}}{{{{ .Data.data.value }}}}{{{{ end }}}}"
  exec {{
    command = {command}
  }}
}}
"""


def stamp_argv(stamps: Path) -> list[str]:
    """A command that appends the wall-clock time it ran to stamps (sh and date: a few ms to start)."""
    return ["/bin/sh", "-c", f"date +%s.%N >> {shlex.quote(str(stamps))}"]


def read_stamps(stamps: Path) -> list[float]:
    try:
        return [float(line) for line in stamps.read_text().split()]
    except (OSError, ValueError):
        return []


class AgentRun:
    """OpenBao Agent rendering one secret to tmpfs and running the template's `exec` command after
    each render; measures how long a change takes to show there (f) and to run the command (h).

    Started early (the agent's default re-render interval for static secrets is minutes), polled by
    a thread while the other sections run, collected at the end.
    """

    def __init__(self, root: Path, bao: Any, backend: Backend) -> None:
        self.dir = root / "agent"
        self.dir.mkdir()
        self.bao = bao
        self.backend = backend
        self.proc: subprocess.Popen[bytes] | None = None
        self.changed_at: float | None = None
        self.visible_at: float | None = None
        self.command_at: float | None = None  # the command's own timestamp of its run after the change
        self.stamps = self.dir / "stamps"
        self._stamps_before = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dest = Path(tempfile.mkdtemp(prefix="secretfs-bench-agent-", dir="/dev/shm")) / "secret"

    def start(self) -> None:
        from tests.support.bao import BAO

        self.backend.put("bench/agent", "A" * 64)
        (self.dir / "token").write_text("root")
        config = self.dir / "agent.hcl"
        config.write_text(
            AGENT_CONFIG.format(
                dir=self.dir, addr=self.bao.addr, dest=self.dest, command=json.dumps(stamp_argv(self.stamps))
            )
        )
        with open(self.dir / "agent.log", "wb") as out:
            self.proc = subprocess.Popen(
                [str(BAO), "agent", f"-config={config}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.bao.env(),
            )
        if wait_for(self.dest, b"A" * 64, 30, interval=0.02) is None:
            raise RuntimeError(f"bao agent did not render the secret: {(self.dir / 'agent.log').read_text()[-2000:]}")
        deadline = time.monotonic() + 10  # the command of the first render
        while not read_stamps(self.stamps) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        self._stamps_before = len(read_stamps(self.stamps))
        self.changed_at = change_vault(self.bao, "bench/agent", "B" * 64)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            if self.visible_at is None:
                try:
                    if self.dest.read_bytes() == b"B" * 64:
                        self.visible_at = time.time()
                except OSError:
                    pass
            if self.command_at is None:
                stamps = read_stamps(self.stamps)
                if len(stamps) > self._stamps_before:
                    self.command_at = stamps[self._stamps_before]
            if self.visible_at is not None and self.command_at is not None:
                return
            self._stop.wait(0.02)

    def result(self, wait: float) -> tuple[float | None, float]:
        """(seconds from change to visible or None, seconds waited)."""
        assert self.changed_at is not None
        remaining = self.changed_at + wait - time.time()
        if self._thread is not None and remaining > 0 and (self.visible_at is None or self.command_at is None):
            log(f"waiting up to {remaining:.0f} s more for OpenBao Agent to render the change")
            self._thread.join(remaining)
        waited = time.time() - self.changed_at
        if self.visible_at is None:
            return None, waited
        return self.visible_at - self.changed_at, waited

    def command_result(self) -> tuple[float | None, float]:
        """(seconds from change to the template command's run or None, seconds waited); after result()."""
        assert self.changed_at is not None
        waited = time.time() - self.changed_at
        if self.command_at is None:
            return None, waited
        return max(0.0, self.command_at - self.changed_at), waited

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dest.parent, ignore_errors=True)


# ----- h. telling applications: inotify events and on-change actions (issue 12) ------------------

EVENTS_DIR = "bench/events"
IN_CLOSE_WRITE = 0x8
_INOTIFY_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class DirWatch:
    """A real inotify watch (IN_CLOSE_WRITE) on a directory, as an application would hold one; a
    thread blocked on it stamps every event with the wall-clock time it arrived."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CLOSE_WRITE) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self.arrivals: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._read, name="bench-inotify", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd, self._wake_r], [], [])
            now = time.time()
            if self._wake_r in ready:
                return
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            names, offset = [], 0
            while offset + _INOTIFY_EVENT.size <= len(data):
                _wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, offset)
                start = offset + _INOTIFY_EVENT.size
                if mask & IN_CLOSE_WRITE:
                    names.append(os.fsdecode(data[start : start + length].rstrip(b"\0")))
                offset = start + length
            with self._cond:
                for name in names:
                    self.arrivals.setdefault(name, []).append(now)
                self._cond.notify_all()

    def count(self, name: str) -> int:
        with self._cond:
            return len(self.arrivals.get(name, []))

    def wait(self, name: str, before: int, timeout: float) -> float | None:
        """The arrival time of the first IN_CLOSE_WRITE for name after the first `before` ones, or None."""
        with self._cond:
            if self._cond.wait_for(lambda: len(self.arrivals.get(name, [])) > before, timeout):
                return self.arrivals[name][before]
        return None

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)


def change_store(backend: Backend, name: str, value: str) -> float:
    """A change outside the mount, straight to the store; its commit time (wall clock)."""
    if backend.kind == "vault":
        return change_vault(backend.bao, name, value)
    return change_sqlite(backend, name, value)  # the SQL store of the instance: SQLite or PostgreSQL


def wait_stamp(stamps: Path, before: int, timeout: float) -> float | None:
    """The first timestamp an action's command appended after the first `before` ones, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_stamps(stamps)
        if len(found) > before:
            return found[before]
        time.sleep(0.005)
    return None


def default_debounce() -> float:
    """The debounce an action gets when nothing sets it (the --on-change-exec flag sets nothing)."""
    from secretfs.actions import Action

    return Action(secrets=("bench/*",), exec=("true",)).debounce


def events_label(backend: Backend) -> str:
    return "Vault (`--cache-ttl 1`)" if backend.kind == "vault" else backend.label


def bench_events(root: Path, counts: Counts, backends: list[Backend], results: Results) -> None:
    """Per store, one kernel-mode writable mount (the announcer needs a writable mount) with a real
    inotify watch on a directory and two on-change actions: the default debounce (the
    --on-change-exec flag) and debounce 0 with min_interval 0 (an --actions file). Each change is
    awaited before the next, 0.3 s apart."""
    debounce = default_debounce()
    rounds = counts.events
    for backend in backends:
        label = events_label(backend)
        names = {key: f"{EVENTS_DIR}/{key}" for key in ("store", "cli", "action-default", "action-zero")}
        for name in names.values():
            backend.put(name, "start")
        stamps = {key: root / f"stamps-{backend.kind}-{key}" for key in ("action-default", "action-zero")}
        actions = root / f"actions-{backend.kind}.toml"
        actions.write_text(
            "[[action]]\n"
            f"secrets = [{json.dumps(names['action-zero'])}]\n"
            f"exec = {json.dumps(stamp_argv(stamps['action-zero']))}\n"
            "debounce = 0\n"
            "min_interval = 0\n"
        )
        args = ["--cache-mode", "kernel", *(["--cache-ttl", "1"] if backend.kind == "vault" else [])]
        args += ["--on-change-exec", f"{names['action-default']}={shlex.join(stamp_argv(stamps['action-default']))}"]
        args += ["--actions", str(actions)]
        timeout = 10.0 + debounce
        with mounted(backend.instance, root / f"mnt-events-{backend.kind}", *args) as m:
            for name in names.values():
                warm_up(m.path / name)
            watch = DirWatch(m.path / EVENTS_DIR)
            try:
                for key in ("store", "cli"):
                    leaf = names[key].rsplit("/", 1)[1]
                    lags = []
                    for i in range(rounds):
                        value = f"{key}-{i}-" + "v" * 48
                        time.sleep(0.3)
                        before = watch.count(leaf)
                        if key == "store":
                            changed = change_store(backend, names[key], value)
                        else:
                            changed = time.time()  # right before the CLI process starts
                            backend.put(names[key], value)
                        seen = watch.wait(leaf, before, timeout)
                        lags.append(float("inf") if seen is None else max(0.0, seen - changed))
                        if seen is not None and read_bytes(m.path / names[key]) != value.encode():
                            results.events_stale += 1
                    what = "store write" if key == "store" else "`secretfs put` started"
                    results.events[f"{label}, {what} -> inotify event"] = lags
            finally:
                watch.close()
            for key, shown in (
                ("action-default", f"debounce {debounce:g} s, the default"),
                ("action-zero", "debounce 0 s, min_interval 0 s"),
            ):
                lags = []
                for i in range(rounds):
                    value = f"{key}-{i}-" + "v" * 40
                    time.sleep(0.3)
                    before = len(read_stamps(stamps[key]))
                    changed = change_store(backend, names[key], value)
                    ran = wait_stamp(stamps[key], before, timeout)
                    lags.append(float("inf") if ran is None else max(0.0, ran - changed))
                results.events[f"{label}, store write -> on-change action ({shown})"] = lags
        log(f"h {label}: {[(k, statistics.median(v)) for k, v in results.events.items() if k.startswith(label)]}")


# ----- the report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "n/a"
    if value == float("inf"):
        return "not seen"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b or a != a or b != b or a == float("inf"):
        return "n/a"
    return f"{a / b:.2f}x" if a / b >= 0.1 else f"{a / b:.4f}x"


def check(limit: float | None, value: float | None, *, at_least: bool = False) -> str:
    if limit is None or value is None or value != value:
        return "n/a"
    ok = value >= limit if at_least else value <= limit
    return "met" if ok else "**missed**"


def render_report(results: Results, counts: Counts, mode: str, agent: tuple[float | None, float] | None) -> str:
    lines: list[str] = []
    tmpfs = results.warm.get("tmpfs", (0.0, 0.0))[0]
    minimal = results.warm.get("minimal", (0.0, 0.0))[0]
    out = lines.append
    out(
        f"Measured by `bench/run{'' if mode == 'full' else ' --' + mode}` on {time.strftime('%Y-%m-%d')}: "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}."
    )
    out("")
    if results.warm:
        out("**a. Warm read** (open+read+close of a 64-byte secret, C client, µs per operation)")
        out("")
        out("| configuration | median µs | p99 µs | vs tmpfs | vs minimal direct_io fs |")
        out("|---|---:|---:|---:|---:|")
        for label, (median, p99) in results.warm.items():
            name = {"tmpfs": "tmpfs (baseline)", "minimal": "minimal mfusepy direct_io fs (baseline)"}.get(label, label)
            out(f"| {name} | {fmt(median)} | {fmt(p99)} | {ratio(median, tmpfs)} | {ratio(median, minimal)} |")
    if results.cold:
        out("")
        out("**b. Cold read** (value cache off: `--cache-mode direct --cache-ttl 0`; µs per open+read+close)")
        out("")
        out("| store | secretfs median µs | direct store read µs (Python) | vs direct read | vs minimal fs |")
        out("|---|---:|---:|---:|---:|")
        for label in dict.fromkeys(k.rsplit(" ", 1)[0] if k.endswith(" secretfs") else "" for k in results.cold):
            if not label:
                continue
            ours = results.cold.get(f"{label} secretfs")
            base = results.cold.get(f"{label} direct store read")
            out(f"| {label} | {fmt(ours)} | {fmt(base)} | {ratio(ours, base)} | {ratio(ours, minimal)} |")
    if results.scale:
        out("")
        out("**c. Scale** (SQLite, default mount: kernel mode, writable; one flat directory)")
        out("")
        out("| secrets | `secretfs mount` until ready s | `ls` s | `ls -l` s | daemon RSS MB |")
        out("|---:|---:|---:|---:|---:|")
        for total, row in results.scale.items():
            out(
                f"| {total:,} | {fmt(row['ready'], 2)} | {fmt(row['ls'], 2)} | {fmt(row['ls_l'], 2)} "
                f"| {fmt(row['rss'])} |"
            )
    if results.threads:
        out("")
        out("**d. Concurrency** (warm-read throughput, operations/s; SQLite for secretfs)")
        out("")
        out("| configuration | 1 thread | 4 threads | 16 threads | 4 vs 1 | 16 vs 1 |")
        out("|---|---:|---:|---:|---:|---:|")
        for label, per in results.threads.items():
            out(
                f"| {label} | {fmt(per.get(1), 0)} | {fmt(per.get(4), 0)} | {fmt(per.get(16), 0)} "
                f"| {ratio(per.get(4), per.get(1))} | {ratio(per.get(16), per.get(1))} |"
            )
    if results.write:
        out("")
        out("**e. Write** (open O_TRUNC + write 64 bytes + close, as `printf … > file`; median µs)")
        out("")
        out("| configuration | median µs | vs direct store write | vs tmpfs |")
        out("|---|---:|---:|---:|")
        for label, value in results.write.items():
            store = label.split(" ")[0]
            base = results.write.get(f"{store} direct store write")
            out(f"| {label} | {fmt(value)} | {ratio(value, base)} | {ratio(value, results.write.get('tmpfs'))} |")
    if results.fresh or agent is not None:
        out("")
        out(
            "**f. Freshness** (seconds from a same-size change outside the mount until a read returns it; "
            f"TTL {TTL:g} s)"
        )
        out("")
        out("| configuration | median s | max s | vs OpenBao Agent |")
        out("|---|---:|---:|---:|")
        agent_s = agent[0] if agent else None
        for label, seen in results.fresh.items():
            med = statistics.median(seen) if seen else None
            out(f"| {label} | {fmt(med, 3)} | {fmt(max(seen) if seen else None, 3)} | {ratio(med, agent_s)} |")
        if agent is not None:
            shown = fmt(agent[0], 3) if agent[0] is not None else f"not within {agent[1]:.0f} s"
            out(f"| OpenBao Agent, template, default settings | {shown} | {shown} | 1.00x |")
    if results.propagation:
        out("")
        out(
            "**g. Propagation** (kernel mode, TTL "
            f"{TTL:g} s: stale first reads right after `put` returned, and seconds until the new value was read)"
        )
        out("")
        out("| path | stale first reads | median s | max s |")
        out("|---|---:|---:|---:|")
        for label, (stale, rounds, lags) in results.propagation.items():
            shown = "n/a (not awaited)" if stale is None else f"{stale} of {rounds}"
            out(f"| {label} | {shown} | {fmt(statistics.median(lags), 3)} | {fmt(max(lags), 3)} |")
    if results.events or results.agent_command is not None:
        render_events(results, counts, out)
    if results.policy:
        render_policy(results, out)
    out("")
    out("**Targets**")
    out("")
    out("| target | limit | measured | |")
    out("|---|---:|---:|---|")

    def target(what: str, limit: float | None, value: float | None, unit: str, at_least: bool = False) -> None:
        out(f"| {what} | {fmt(limit, 2)} {unit} | {fmt(value, 2)} {unit} | {check(limit, value, at_least=at_least)} |")

    for store in ("SQLite", "Vault"):
        if f"{store} kernel read-only" not in results.warm:
            continue
        target(
            f"warm, kernel, read-only, {store}: ≤ 3x tmpfs",
            3 * tmpfs,
            results.warm[f"{store} kernel read-only"][0],
            "µs",
        )
        target(
            f"warm, kernel, writable, {store}: ≤ 0.6x minimal",
            0.6 * minimal,
            results.warm[f"{store} kernel writable"][0],
            "µs",
        )
        for access in ("read-only", "writable"):
            target(
                f"warm, direct, {access}, {store}: ≤ 1.2x minimal",
                1.2 * minimal,
                results.warm[f"{store} direct {access}"][0],
                "µs",
            )
    if "SQLite secretfs" in results.cold:
        target("cold, SQLite: ≤ 1.6x minimal", 1.6 * minimal, results.cold["SQLite secretfs"], "µs")
    if "Vault secretfs" in results.cold and "Vault direct read-only" in results.warm:
        limit = results.cold["Vault direct store read"] + results.warm["Vault direct read-only"][0]
        target("cold, Vault: ≤ hvac GET + warm direct", limit, results.cold["Vault secretfs"], "µs")
    big = max(results.scale) if results.scale else None
    if big is not None and big >= 100_000:
        target("100k: ready ≤ 3 s", 3.0, results.scale[big]["ready"], "s")
        target("100k: `ls` ≤ 1.5 s", 1.5, results.scale[big]["ls"], "s")
        target("100k: `ls -l` ≤ 15 s", 15.0, results.scale[big]["ls_l"], "s")
        target("100k: RSS ≤ 200 MB", 200.0, results.scale[big]["rss"], "MB")
    if 10_000 in results.scale:
        target("10k: RSS ≤ 80 MB", 80.0, results.scale[10_000]["rss"], "MB")
    direct = results.threads.get("direct writable") or results.threads.get("direct read-only")
    if direct:
        target("direct: 4 threads ≥ 1.3x 1 thread", 1.3, direct[4] / direct[1], "x", at_least=True)
    for label, limit in (("SQLite direct", 1.0), ("SQLite kernel", TTL), ("Vault kernel", TTL), ("Vault direct", TTL)):
        if label in results.fresh:
            target(f"freshness, {label}: ≤ {limit:g} s", limit, max(results.fresh[label]), "s")
    for label, (stale, _, lags) in results.propagation.items():
        if stale is not None and "(this host)" in label:
            target(f"{label}: 0 stale reads", 0.0, float(stale), "reads")
        elif "host B" in label and "TTL path" not in label:
            target(f"{label}: median ≤ 0.3 s", 0.3, statistics.median(lags), "s")
            target(f"{label}: max ≤ 1 s", 1.0, max(lags), "s")
    base = results.policy.get("kernel writable, no policy", (None, None))[0]
    for label, limit in (("kernel writable, readers rule", 1.2), ("kernel writable, audit log", 1.1)):
        if label in results.policy and base:
            target(f"{label}: ≤ {limit:g}x no policy", limit, results.policy[label][0] / base, "x")
    for note in results.notes:
        out("")
        out(note)
    return "\n".join(lines) + "\n"


def render_policy(results: Results, out: Callable[[str], None]) -> None:
    out("")
    out(
        "**i. Policy and audit log** (SQLite; µs per warm open+read+close; the rule's readers: `uids` "
        "and `exe`, which the timing client passes; every open then reaches the daemon)"
    )
    out("")
    out("| mount | median µs | p99 µs | vs kernel writable, no policy |")
    out("|---|---:|---:|---:|")
    base = results.policy.get("kernel writable, no policy", (None, None))[0]
    for label, (median, p99) in results.policy.items():
        out(f"| {label} | {fmt(median)} | {fmt(p99)} | {ratio(median, base)} |")


def fraction(a: float | None, b: float | None) -> str:
    """ratio(), with a ratio below 0.001 shown as 1/N (N: how many times longer b is)."""
    if a and b and a == a and b == b and a != float("inf") and a / b < 0.001:
        return f"1/{b / a:,.0f}"
    return ratio(a, b)


def render_events(results: Results, counts: Counts, out: Callable[[str], None]) -> None:
    out("")
    out(
        "**h. Telling applications** (kernel mode, writable mount; ms from a change outside the mount until "
        "an inotify watch on the secret's directory gets IN_CLOSE_WRITE for the file, or until an on-change "
        f"action's command ran; {counts.events} changes per row)"
    )
    out("")
    out("| path | median ms | max ms | vs OpenBao Agent command |")
    out("|---|---:|---:|---:|")
    agent = results.agent_command
    agent_ms = agent[0] * 1000 if agent is not None and agent[0] is not None else None
    # the agent took longer than it was waited for: the ratio is below the one against the wait
    waited_ms = agent[1] * 1000 if agent is not None and agent_ms is None else None
    for label, lags in results.events.items():
        med = statistics.median(lags) * 1000 if lags else None
        worst = max(lags) * 1000 if lags else None
        versus = "< " + fraction(med, waited_ms) if waited_ms is not None else fraction(med, agent_ms)
        out(f"| {label} | {fmt(med)} | {fmt(worst)} | {versus} |")
    if agent is not None:
        shown = fmt(agent_ms) if agent_ms is not None else f"not within {agent[1]:.0f} s"
        out(f"| OpenBao Agent, template `exec` command, default settings | {shown} | {shown} | 1.00x |")
    out("")
    out(
        "A store write is made by another process: for SQLite and PostgreSQL secretfs's own store layer "
        "(timed from its commit), for Vault `bao kv put` (timed from the server's `created_time`). "
        "`secretfs put` started is timed from just before the CLI process is started, so it includes the "
        "CLI's start-up. An action's time is the one its command (`/bin/sh -c 'date +%s.%N >> FILE'`) "
        "wrote. The OpenBao Agent command is the same `sh -c date`, run by the agent's template `exec` "
        "after it re-rendered a secret changed in Vault at the start of the run (the agent of section f)."
        + (
            f" {results.events_stale} read(s) right after an event did not yet return the new value."
            if results.events_stale
            else " Every read right after an event returned the new value."
        )
    )


def write_doc(report: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Measured\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{report}{END}{tail}")


# ----- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller counts; scale to 10k; short agent wait")
    size.add_argument("--smoke", action="store_true", help="seconds: SQLite only, tiny counts (the test suite's mode)")
    parser.add_argument("--sections", default="abcdefghi", help="which sections to run (default: abcdefghi)")
    parser.add_argument("--scale", default="", help="comma-separated secret counts for section c")
    parser.add_argument("--stores", default="", help="comma-separated: sqlite,pg,vault (default: all; smoke: sqlite)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    return parser.parse_args(argv)


def interrupt_on_term() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    scale = [int(x.replace("k", "000")) for x in args.scale.split(",") if x] if args.scale else None
    counts = Counts.make(mode, scale)
    stores = (
        set(args.stores.split(",")) if args.stores else ({"sqlite"} if mode == "smoke" else {"sqlite", "pg", "vault"})
    )
    sections = set(args.sections)
    interrupt_on_term()
    results = Results()
    agent_result: tuple[float | None, float] | None = None
    root = Path(tempfile.mkdtemp(prefix="secretfs-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        client = Client(compile_client(root))
        backends = [sqlite_backend(root)]
        bao = None
        if "vault" in stores:
            from tests.support.bao import start_bao

            bao = start_bao(root / "bao")
            stack.callback(bao.stop)
            backends.append(vault_backend(root, bao))
        agent: AgentRun | None = None
        if bao is not None and ("f" in sections or "h" in sections) and counts.agent_wait > 0:
            agent = AgentRun(root, bao, backends[-1])
            stack.callback(agent.stop)
            agent.start()
        if "a" in sections or "d" in sections:
            log("a/d: warm reads and concurrency")
            bench_warm(root, client, counts, backends, results, with_threads="d" in sections)
        pg: Backend | None = None
        if "pg" in stores and ("b" in sections or "g" in sections or "h" in sections):
            from tests.support.pg import postgres_server

            pg = pg_backend(root, stack.enter_context(postgres_server()))
        if "b" in sections:
            log("b: cold reads")
            bench_cold(root, client, counts, backends[:1] + ([pg] if pg else []) + backends[1:], results)
        if "c" in sections:
            log("c: scale")
            bench_scale(root, counts, results)
        if "e" in sections:
            log("e: writes")
            bench_write(root, client, counts, backends, results)
        if "f" in sections:
            log("f: freshness")
            bench_fresh(root, counts, backends, results)
        if "g" in sections:
            log("g: propagation")
            bench_propagation(root, counts, backends[:1] + ([pg] if pg else []) + backends[1:], results)
        if "h" in sections:
            log("h: telling applications (inotify events, on-change actions)")
            bench_events(root, counts, backends[:1] + ([pg] if pg else []) + backends[1:], results)
        if "i" in sections:
            log("i: policy and audit log")
            bench_policy(root, client, counts, backends[0], results)
        if agent is not None:  # one agent, one wait, collected after every section: f's render, h's command
            waited = agent.result(counts.agent_wait)
            if "f" in sections:
                agent_result = waited
            if "h" in sections:
                results.agent_command = agent.command_result()
    report = render_report(results, counts, mode, agent_result)
    print(report)
    if not args.no_doc:
        write_doc(report)
        log(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything was cleaned up")
        sys.exit(130)
