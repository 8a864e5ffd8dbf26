"""Load: 16 concurrent readers and a writer through a real mount, over SQLite and over Vault.

No read may fail or return a torn value, and the daemon's memory must stay flat. CI runs a short
version; `--run-slow` runs the 60-second one.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.bao import BaoServer, vault_env
from tests.support.mount import Instance, Mounted, make_instance, mounted, os_read

READERS = 16
SECRETS = 24
SHORT = 6.0
LONG = 60.0
# Growth allowed between the RSS after warm-up and at the end (allocator noise, thread stacks).
RSS_SLACK_KB = 40 * 1024


def digest(name: str, counter: int) -> str:
    return hashlib.sha256(f"{name}|{counter}".encode()).hexdigest()[:16]


def value_for(name: str, counter: int) -> bytes:
    """A self-checking value (its length varies): a torn or mixed read cannot pass check_value."""
    return f"{name}|{counter}|{digest(name, counter)}|{'x' * (counter % 97)}".encode()


def check_value(name: str, data: bytes) -> None:
    parts = data.decode().split("|")
    assert len(parts) == 4 and parts[0] == name, data
    counter = int(parts[1])
    assert parts[2] == digest(name, counter) and parts[3] == "x" * (counter % 97), data


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


Writer = Callable[[str, bytes], None]


def run_load(m: Mounted, names: list[str], duration: float, write: Writer) -> tuple[int, int, int, int]:
    """Readers and a writer for duration seconds; returns (reads, writes, rss_start, rss_end)."""
    errors: list[str] = []
    reads = [0] * READERS
    writes = [0]
    stop = threading.Event()

    def reader(slot: int) -> None:
        rng = random.Random(slot)
        while not stop.is_set():
            name = rng.choice(names)
            try:
                check_value(name, os_read(m.path / name))
                reads[slot] += 1
            except Exception as exc:  # every failure is collected and fails the test
                errors.append(f"read {name}: {exc!r}")
                return

    def writer() -> None:
        rng = random.Random(99)
        counter = 1
        while not stop.is_set():
            name = rng.choice(names)
            counter += 1
            try:
                write(name, value_for(name, counter))
                writes[0] += 1
            except Exception as exc:
                errors.append(f"write {name}: {exc!r}")
                return
            time.sleep(0.01)

    for name in names:  # warm-up: every secret read once, then measure RSS
        check_value(name, (m.path / name).read_bytes())
    rss_start = rss_kb(m.proc.pid)
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    rss_end = rss_kb(m.proc.pid)
    assert not errors, errors[:5]
    return sum(reads), writes[0], rss_start, rss_end


def through_mount(m: Mounted) -> Writer:
    """The atomic replace editors and `install` do: a temporary file, renamed onto the name."""

    def write(name: str, data: bytes) -> None:
        temporary = m.path / f"{name}.new"
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, m.path / name)

    return write


def through_sqlite(instance: Instance) -> Writer:
    """Another writer of the same database (as `secretfs put` would be), in this process."""
    from secretfs.config import load_settings
    from secretfs.render import parse
    from secretfs.stores.sql_setup import open_sql_store

    store = open_sql_store(load_settings(env=instance.env))
    return lambda name, data: store.write(name, parse(data))


def through_vault(bao: BaoServer, prefix: str) -> Writer:
    return lambda name, data: bao.ok("POST", f"{prefix}/{name}", json={"data": {"value": data.decode()}}) and None


def load(m: Mounted, duration: float, write: Writer) -> None:
    names = [f"load/s{i:02d}" for i in range(SECRETS)]
    (m.path / "load").mkdir(exist_ok=True)
    for name in names:
        write(name, value_for(name, 1))
    reads, writes, rss_start, rss_end = run_load(m, names, duration, write)
    print(f"\nload {duration:.0f}s: {reads} reads, {writes} writes, daemon RSS {rss_start} kB -> {rss_end} kB")
    assert reads > READERS and writes > 0
    assert rss_end - rss_start < RSS_SLACK_KB, (rss_start, rss_end)


# kernel mode: the writer is another process (the usual shape: applications read, an operator or a
# deployment writes). direct mode: the writer replaces values through the same mount, atomically.
# (Readers of the same mount as a writer that rewrites a file in place can see it empty while the
# writer has it open with O_TRUNC, as on any local filesystem; see the README.)
CASES = [("kernel", "external"), ("direct", "mount")]


def run_case(m: Mounted, writer: str, external: Writer, duration: float) -> None:
    load(m, duration, through_mount(m) if writer == "mount" else external)


@pytest.mark.parametrize(("cache_mode", "writer"), CASES)
@pytest.mark.mount
def test_load_sqlite_short(instance: Instance, tmp_path: Path, cache_mode: str, writer: str) -> None:
    with mounted(instance, tmp_path / "m", "--cache-mode", cache_mode) as m:
        run_case(m, writer, through_sqlite(instance), SHORT)


@pytest.mark.parametrize(("cache_mode", "writer"), CASES)
@pytest.mark.mount
def test_load_vault_short(tmp_path: Path, bao_server: BaoServer, cache_mode: str, writer: str) -> None:
    inst, prefix = vault_instance(tmp_path, bao_server)
    with mounted(inst, tmp_path / "m", "--cache-mode", cache_mode) as m:
        run_case(m, writer, through_vault(bao_server, prefix), SHORT)


@pytest.mark.slow
@pytest.mark.parametrize(("cache_mode", "writer"), CASES)
@pytest.mark.mount
def test_load_sqlite_60s(instance: Instance, tmp_path: Path, cache_mode: str, writer: str) -> None:
    with mounted(instance, tmp_path / "m", "--cache-mode", cache_mode) as m:
        run_case(m, writer, through_sqlite(instance), LONG)


@pytest.mark.slow
@pytest.mark.parametrize(("cache_mode", "writer"), CASES)
@pytest.mark.mount
def test_load_vault_60s(tmp_path: Path, bao_server: BaoServer, cache_mode: str, writer: str) -> None:
    inst, prefix = vault_instance(tmp_path, bao_server)
    with mounted(inst, tmp_path / "m", "--cache-mode", cache_mode) as m:
        run_case(m, writer, through_vault(bao_server, prefix), LONG)


def vault_instance(tmp_path: Path, bao: BaoServer) -> tuple[Instance, str]:
    sub = f"load-{uuid.uuid4().hex[:8]}"
    return make_instance(tmp_path, **vault_env(bao, f"secret/data/{sub}")), f"secret/data/{sub}"
