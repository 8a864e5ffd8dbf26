"""`secretfs watch`: real subprocesses over a private SQLite store.

A watch is ready once its control socket exists (after its baseline is read); from then on each
change of a matching secret's value is reported exactly once, a value put again never, and nothing
it prints or hands to CMD carries a value or key material.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs import control
from secretfs.changes import Changes
from secretfs.config import load_settings
from secretfs.errors import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from secretfs.watch import Patterns, child_env, merge
from tests.support.mount import SECRETFS, Instance, Mounted, make_instance, os_read
from tests.support.wait import wait_until

VALUE_MARKER = "VALUEMARKER"
LEAKS = {
    "ARCHESTRA_EXTRA": "leak-archestra",
    "MY_ENCRYPTION_KEY": "leak-key",
    "VAULT_TOKEN": "leak-token",
    "BAO_VAULT_TOKEN_FILE": "leak-token-file",
}

# CMD: appends one JSON record per run to argv[1]; with argv[2], the first run waits for a gate file.
RECORDER = """
import json, os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
busy = out.with_suffix(".busy")
try:
    os.close(os.open(busy, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    overlap = False
except FileExistsError:
    overlap = True
gate = out.with_suffix(".gate")
deadline = time.monotonic() + 10
while len(sys.argv) > 2 and not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
withheld = sorted(k for k in os.environ if k.startswith("ARCHESTRA_") or "ENCRYPTION_KEY" in k or "VAULT_TOKEN" in k)
record = {
    "changed": os.environ.get("SECRETFS_CHANGED"),
    "kinds": json.loads(os.environ.get("SECRETFS_CHANGE_KINDS", "null")),
    "withheld": withheld,
    "overlap": overlap,
}
with out.open("a") as f:
    f.write(json.dumps(record) + "\\n")
if not overlap:
    busy.unlink()
sys.exit(1)
"""


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A private, short control-socket directory (a socket path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sfw-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def instance(tmp_path: Path, runtime: Path) -> Instance:
    inst = make_instance(tmp_path, SECRETFS_RUNTIME_DIR=str(runtime))
    inst.cli("put", "app/one", input=b"one-v1")
    return inst


class Watch:
    """A `secretfs watch` subprocess, its output in files."""

    def __init__(self, instance: Instance, runtime: Path, tmp_path: Path, *args: str, **env: str) -> None:
        self.out = tmp_path / "watch.out"
        self.err = tmp_path / "watch.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*SECRETFS, "watch", *args],
                env={**instance.env, **env},
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        store = control.store_id(load_settings(instance.env))
        self.socket = runtime / f"{store}-{self.proc.pid}.sock"

    def ready(self) -> Watch:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}: {self.stderr()}")
            return self.socket.exists()

        wait_until(listening, 10, message=lambda: f"watch not listening: {self.stderr()}")
        return self

    def exited(self, timeout: float = 10) -> int:
        wait_until(lambda: self.proc.poll() is not None, timeout, message=lambda: f"still running: {self.stderr()}")
        return self.proc.returncode

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def start(instance: Instance, runtime: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Watch] = []

    def start_watch(*args: str, **env: str) -> Watch:
        watch = Watch(instance, runtime, tmp_path, *args, **env)
        started.append(watch)
        return watch

    yield start_watch
    for watch in started:
        watch.stop()


def no_traceback(text: str) -> str:
    assert "Traceback" not in text, text
    assert VALUE_MARKER not in text
    return text


# ----- without CMD ----------------------------------------------------------------------------------


def test_exits_once_with_the_name_of_the_matching_change(instance: Instance, start: Any) -> None:
    watch = start("app/*", "--interval", "0").ready()  # no polling: the put's control message tells it
    result = instance.cli("put", "other", input=f"{VALUE_MARKER}-other".encode())  # does not match
    assert result.stderr == b""  # the watch answered its control message like a mount
    instance.cli("put", "app/two", input=f"{VALUE_MARKER}-two".encode())
    assert watch.exited() == EXIT_OK
    assert watch.stdout() == "app/two\n"
    assert no_traceback(watch.stderr()) == ""


def test_the_same_value_put_again_is_not_reported(instance: Instance, start: Any) -> None:
    watch = start("app/one", "app/two", "--interval", "0").ready()
    instance.cli("put", "app/one", input=b"one-v1")  # the value it already has
    instance.cli("put", "app/two", input=b"two-v1")
    assert watch.exited() == EXIT_OK
    assert watch.stdout() == "app/two\n"  # app/one's put came first: had it counted, it would be here


def test_json_records_name_kind_and_time_never_a_value(instance: Instance, start: Any) -> None:
    watch = start("app/*", "--json").ready()
    before = time.time()
    instance.cli("rm", "app/one")
    assert watch.exited() == EXIT_OK
    records = [json.loads(line) for line in watch.stdout().splitlines()]
    assert len(records) == 1
    assert set(records[0]) == {"name", "change", "time"}
    assert records[0]["name"] == "app/one" and records[0]["change"] == "removed"
    assert before <= records[0]["time"] <= time.time()
    assert "one-v1" not in watch.stdout() + watch.stderr()


def test_json_added_has_no_value(instance: Instance, start: Any) -> None:
    watch = start("app/new", "--json").ready()
    instance.cli("put", "app/new", input=f"{VALUE_MARKER}-new".encode())
    assert watch.exited() == EXIT_OK
    assert json.loads(watch.stdout())["change"] == "added"
    no_traceback(watch.stdout() + watch.stderr())


def test_wait_timeout_exits_with_its_own_code(start: Any) -> None:
    watch = start("app/*", "--wait-timeout", "0.5")
    assert watch.exited() == EXIT_TIMEOUT == 8
    assert watch.stdout() == ""
    assert len(no_traceback(watch.stderr()).splitlines()) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_zero_quietly(start: Any, signum: int) -> None:
    watch = start("app/*").ready()
    watch.proc.send_signal(signum)
    assert watch.exited() == EXIT_OK
    assert watch.stdout() == "" and watch.stderr() == ""
    assert not watch.socket.exists()  # its control socket is gone with it


def test_bad_arguments_are_usage_errors(instance: Instance) -> None:
    for args in (["bad//name"], [""], ["x", "--wait-timeout", "1", "--", "true"], ["x", "--", "/nonexistent/cmd"]):
        result = instance.cli("watch", *args, check=False)
        assert result.returncode == EXIT_USAGE, (args, result.stderr)
        assert b"Traceback" not in result.stderr


# ----- with CMD ---------------------------------------------------------------------------------------


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cmd_runs_once_per_change_and_never_for_the_same_value(instance: Instance, start: Any, tmp_path: Path) -> None:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    log = tmp_path / "runs.jsonl"
    watch = start("app/*", "--", sys.executable, str(script), str(log), **LEAKS).ready()

    def runs(n: int) -> None:
        wait_until(lambda: len(records(log)) >= n, 10, message=lambda: f"runs: {records(log)} {watch.stderr()}")

    instance.cli("put", "app/one", input=b"one-v2")
    runs(1)
    instance.cli("put", "app/one", input=b"one-v2")  # unchanged: no run
    instance.cli("put", "app/one", input=b"one-v3")
    runs(2)
    instance.cli("rm", "app/one")
    runs(3)
    instance.cli("put", "app/two", input=b"two")
    runs(4)
    assert [(r["changed"], r["kinds"]) for r in records(log)] == [
        ("app/one", {"app/one": "changed"}),
        ("app/one", {"app/one": "changed"}),
        ("app/one", {"app/one": "removed"}),
        ("app/two", {"app/two": "added"}),
    ]
    assert all(r["withheld"] == [] and not r["overlap"] for r in records(log))
    # CMD failed every time (exit 1): one line each (written once it exited), and still watching
    wait_until(lambda: watch.stderr().count("exited with status 1; still watching") == 4, 10, message=watch.stderr)
    assert watch.proc.poll() is None
    assert len(no_traceback(watch.stderr()).splitlines()) == 4
    for text in ("one-v2", "one-v3", *LEAKS.values()):
        assert text not in log.read_text()


def test_cmd_runs_one_at_a_time(instance: Instance, start: Any, tmp_path: Path) -> None:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    log = tmp_path / "runs.jsonl"
    watch = start("app/*", "--", sys.executable, str(script), str(log), "gated").ready()
    instance.cli("put", "app/x", input=b"x")
    wait_until(lambda: log.with_suffix(".busy").exists(), 10, message=watch.stderr)  # the first run waits
    instance.cli("put", "app/y", input=b"y")
    instance.cli("put", "app/z", input=b"z")
    log.with_suffix(".gate").touch()
    wait_until(
        lambda: {n for r in records(log) for n in r["changed"].splitlines()} == {"app/x", "app/y", "app/z"},
        10,
        message=lambda: f"runs: {records(log)}",
    )
    runs = records(log)
    assert runs[0]["changed"] == "app/x"
    assert len(runs) <= 3 and not any(r["overlap"] for r in runs)
    no_traceback(watch.stderr())


@pytest.mark.mount
def test_works_while_a_mount_is_live(mnt: Mounted, instance: Instance, start: Any) -> None:
    watch = start("app/*", "--json", "--interval", "0").ready()
    assert os_read(mnt.path / "app" / "one") == b"one-v1"
    (mnt.path / "app" / "one").write_bytes(b"one-v2")  # the mount's commit tells the watch
    assert watch.exited() == EXIT_OK
    assert json.loads(watch.stdout()) | {"time": 0} == {"name": "app/one", "change": "changed", "time": 0}
    result = instance.cli("put", "app/one", input=b"one-v3")  # the watch is gone: no stale-socket warning
    assert b"warning" not in result.stderr


# ----- the pieces -------------------------------------------------------------------------------------


def test_patterns_match_full_names_and_give_the_feed_a_prefix() -> None:
    patterns = Patterns(["tls/*", "db/pass[12]"])
    assert patterns.matches("tls/a") and patterns.matches("tls/a/b")
    assert patterns.matches("db/pass1") and not patterns.matches("db/pass3")
    assert not patterns.matches("tlsx") and not patterns.matches("x/tls/a")
    assert patterns.prefix == ""
    assert Patterns(["tls/*", "tls/b?"]).prefix == "tls/"
    assert Patterns(["exact"]).matches("exact") and not Patterns(["exact"]).matches("exact/more")
    assert Patterns(["app/one", "app/two"]).prefix == "app/"


def test_merged_batches_keep_the_net_kind() -> None:
    first = Changes(added=frozenset({"a"}), removed=frozenset({"b"}), changed=frozenset({"c"}))
    then = Changes(changed=frozenset({"a"}), added=frozenset({"b"}), removed=frozenset({"c"}))
    merged = merge(first, then)
    assert (merged.kind("a"), merged.kind("b"), merged.kind("c")) == ("added", "changed", "removed")


def test_the_child_environment_has_names_and_no_secret_material() -> None:
    base = {"PATH": "/bin", "ARCHESTRA_SECRETS_ENCRYPTION_SECRET": "k", **LEAKS, "my_encryption_key": "e"}
    env = child_env(base, Changes(added=frozenset({"b"}), changed=frozenset({"a"})))
    assert env == {
        "PATH": "/bin",
        "SECRETFS_CHANGED": "a\nb",
        "SECRETFS_CHANGE_KINDS": json.dumps({"a": "changed", "b": "added"}),
    }
