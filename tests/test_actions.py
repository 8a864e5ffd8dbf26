"""On-change actions (secretfs.actions, secretfs.actions_config): real subprocesses, real signals.

Each command action runs `record.py`, which appends one JSON line per run (its argv, the changed
names and kinds it was given, its whole environment, the CLOCK_MONOTONIC time it started) to a log
the test reads. "Exactly one run" is shown by a later sentinel change: once the sentinel's run is
in the log, every earlier run is there too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secretfs.actions import MAX_DEBOUNCE, Action, ActionRunner, attach, child_environment, merge_kind
from secretfs.actions_config import (
    actions_from_options,
    load_actions_file,
    parse_actions,
    parse_exec_flag,
    parse_reload_flag,
    parse_signal_flag,
)
from secretfs.changes import ChangeFeed, Changes
from secretfs.errors import ConfigError
from secretfs.stores.memory import MemoryStore
from tests.support.mount import make_instance
from tests.support.wait import wait_until

RECORD = """\
import json, os, sys, time
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({
        "argv": sys.argv[2:],
        "changed": os.environ.get("SECRETFS_CHANGED"),
        "kinds": os.environ.get("SECRETFS_CHANGE_KINDS"),
        "env": dict(os.environ),
        "started": time.monotonic(),
    }) + "\\n")
"""


class Recorder:
    """A command that logs each of its runs; the runs read back."""

    def __init__(self, tmp_path: Path, name: str = "runs") -> None:
        self.script = tmp_path / "record.py"
        self.script.write_text(RECORD)
        self.log = tmp_path / f"{name}.jsonl"

    def argv(self, *extra: str) -> tuple[str, ...]:
        return (sys.executable, str(self.script), str(self.log), *extra)

    def runs(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_runs(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            runs = self.runs()
            return runs if len(runs) >= count else None

        found = wait_until(enough, timeout, message=lambda: f"expected {count} run(s), got {self.runs()}")
        assert found is not None
        return found


def changed(*names: str) -> Changes:
    return Changes(changed=frozenset(names))


@pytest.fixture
def runners() -> Iterator[list[ActionRunner]]:
    """Runners made by a test, always stopped."""
    made: list[ActionRunner] = []
    yield made
    for runner in made:
        runner.stop()


def start(runners: list[ActionRunner], *actions: Action) -> ActionRunner:
    runner = ActionRunner(actions)
    runner.start()
    runners.append(runner)
    return runner


def stats_when(runner: ActionRunner, index: int, key: str, timeout: float = 15) -> dict[str, Any]:
    """Wait until the action's counter `key` is truthy; its counters."""

    def ready() -> dict[str, Any] | None:
        stats = runner.as_dict()[index]
        return stats if stats[key] else None

    found = wait_until(ready, timeout, message=lambda: f"no {key}: {runner.as_dict()[index]}")
    assert found is not None
    return found


def idle(runner: ActionRunner, index: int = 0) -> dict[str, Any]:
    """Wait until the action has nothing pending and nothing running; its counters."""

    def ready() -> dict[str, Any] | None:
        stats = runner.as_dict()[index]
        return stats if not stats["pending"] and not stats["running"] else None

    found = wait_until(ready, 15, message=lambda: f"action still busy: {runner.as_dict()[index]}")
    assert found is not None
    return found


def alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie waiting for its parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# ----- the runner ---------------------------------------------------------------------------------------


def test_a_burst_gives_one_run_after_the_last_change(tmp_path: Path, runners: list[ActionRunner]) -> None:
    rec = Recorder(tmp_path)
    runner = start(runners, Action(secrets=("tls/*",), exec=rec.argv(), debounce=1.0, min_interval=0))
    runner.notify(changed("tls/cert"))
    time.sleep(0.1)  # pacing the burst: three changes within 0.2 s
    runner.notify(Changes(added=frozenset({"tls/key"})))
    time.sleep(0.1)
    runner.notify(changed("tls/chain", "tls/cert"))
    last = time.monotonic()
    first = rec.wait_runs(1)[0]
    assert first["started"] - last >= 0.95  # debounce after the last change
    assert first["changed"].split("\n") == ["tls/cert", "tls/chain", "tls/key"]
    assert json.loads(first["kinds"]) == {"tls/cert": "changed", "tls/chain": "changed", "tls/key": "added"}
    idle(runner)
    runner.notify(changed("tls/sentinel"))
    runs = rec.wait_runs(2)
    assert [run["changed"] for run in runs] == ["tls/cert\ntls/chain\ntls/key", "tls/sentinel"]
    assert idle(runner)["runs"] == 2


def test_changes_that_never_pause_still_run_it(tmp_path: Path, runners: list[ActionRunner]) -> None:
    rec = Recorder(tmp_path)
    runner = start(runners, Action(secrets=("*",), exec=rec.argv(), debounce=0.3, min_interval=0))
    first = time.monotonic()
    deadline = first + 8
    number = 0
    while not rec.runs() and time.monotonic() < deadline:  # a change every 0.1 s: never a 0.3 s pause
        runner.notify(changed(f"n{number}"))
        number += 1
        time.sleep(0.1)
    run = rec.wait_runs(1, timeout=0)[0]
    assert run["started"] - first < MAX_DEBOUNCE * 0.3 + 2  # no later than 5 debounce periods (+ slack)
    assert run["changed"].split("\n")[0] == "n0"


def test_only_names_matching_the_globs_start_it_or_reach_it(tmp_path: Path, runners: list[ActionRunner]) -> None:
    rec = Recorder(tmp_path)
    runner = start(runners, Action(secrets=("tls/*", "exact"), exec=rec.argv(), debounce=0, min_interval=0))
    runner.notify(Changes(changed=frozenset({"tls/cert", "db/password"}), removed=frozenset({"exact"})))
    first = rec.wait_runs(1)[0]
    assert first["changed"] == "exact\ntls/cert"
    assert json.loads(first["kinds"]) == {"exact": "removed", "tls/cert": "changed"}
    idle(runner)
    runner.notify(changed("db/password", "tlsx", "exactly"))  # matches no glob: no run
    runner.notify(changed("tls/sentinel"))
    runs = rec.wait_runs(2)
    assert [run["changed"] for run in runs] == ["exact\ntls/cert", "tls/sentinel"]
    assert idle(runner)["runs"] == 2


def test_the_child_gets_no_key_secret_or_value_in_its_environment(
    tmp_path: Path, runners: list[ActionRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        "ARCHESTRA_SECRETS_ENCRYPTION_SECRET": "value-archestra-secret",
        "ARCHESTRA_DATABASE_URL": "postgresql://u:value-db-password@h/db",
        "ARCHESTRA_HASHICORP_VAULT_TOKEN": "value-vault-token-1",
        "VAULT_TOKEN": "value-vault-token-2",
        "MY_ENCRYPTION_KEY": "value-encryption-key",
        "app_secret_x": "value-lowercase-secret",
        "SECRETFS_DATA_DIR": "/value/data/dir",
        "AWS_SECRET_ACCESS_KEY": "value-aws-secret",
        "CREDENTIALS_DIRECTORY": "/value/credentials",
    }
    for key, value in planted.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KEEP_ME", "kept")
    store = MemoryStore()
    store.write("app/config", {"value": "value-of-the-secret-itself"})
    rec = Recorder(tmp_path)
    runner = start(runners, Action(secrets=("app/*",), exec=rec.argv(), debounce=0, min_interval=0))
    runner.notify(changed("app/config"))
    env = rec.wait_runs(1)[0]["env"]
    assert not [key for key in env if key in planted or key.startswith("ARCHESTRA_")]
    dump = json.dumps(env)
    assert not [value for value in planted.values() if value in dump]
    assert "value-of-the-secret-itself" not in dump
    assert env["KEEP_ME"] == "kept"
    assert env["PATH"] == os.environ["PATH"]
    assert env["SECRETFS_CHANGED"] == "app/config"
    assert json.loads(env["SECRETFS_CHANGE_KINDS"]) == {"app/config": "changed"}


def test_child_environment_filter() -> None:
    base = {"ARCHESTRA_X": "1", "a_Secret_b": "2", "X_ENCRYPTION_KEY": "3", "VAULT_TOKEN": "4", "HOME": "/root"}
    env = child_environment({"b": "removed", "a": "added"}, base)
    assert env == {
        "HOME": "/root",
        "SECRETFS_CHANGED": "a\nb",
        "SECRETFS_CHANGE_KINDS": '{"a": "added", "b": "removed"}',
    }


def test_kinds_of_coalesced_changes() -> None:
    assert merge_kind(None, "changed") == "changed"
    assert merge_kind("added", "changed") == "added"
    assert merge_kind("added", "removed") == "removed"
    assert merge_kind("removed", "added") == "changed"
    assert merge_kind("changed", "removed") == "removed"


def test_a_command_that_outlives_its_timeout_is_killed_with_its_process_group(
    tmp_path: Path, runners: list[ActionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "sleep.pid"
    shell = f"sleep 60 & echo $! > {pid_file}; wait"
    runner = start(runners, Action(secrets=("*",), shell=shell, debounce=0, timeout=0.5, min_interval=0))
    with caplog.at_level(logging.INFO, logger="secretfs.actions"):
        runner.notify(changed("x"))
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10))
        stats = stats_when(runner, 0, "timeouts")
    assert (stats["runs"], stats["failures"], stats["timeouts"]) == (1, 1, 1)
    wait_until(lambda: not alive(pid), 5, message=f"the action's child {pid} is still running")
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(lines) == 1
    assert "shell command on *" in lines[0]
    assert "timed out after 0.5 s" in lines[0]
    assert "killed by SIGTERM" in lines[0]


def test_a_hanging_action_does_not_delay_another(tmp_path: Path, runners: list[ActionRunner]) -> None:
    pid_file = tmp_path / "hang.pid"
    rec = Recorder(tmp_path)
    runner = start(
        runners,
        Action(secrets=("*",), shell=f"echo $$ > {pid_file}; exec sleep 60", debounce=0, timeout=60, min_interval=0),
        Action(secrets=("*",), exec=rec.argv(), debounce=0.2, min_interval=0),
    )
    runner.notify(changed("a"))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10))
    assert rec.wait_runs(1, timeout=5)[0]["changed"] == "a"
    assert runner.as_dict()[0]["running"]
    runner.notify(changed("b"))
    assert rec.wait_runs(2, timeout=5)[1]["changed"] == "b"
    began = time.monotonic()
    runner.stop()
    assert time.monotonic() - began < 5
    wait_until(lambda: not alive(pid), 5, message=f"stop() left the hanging command {pid} running")


def test_the_rate_limit_coalesces_changes_into_one_later_run(tmp_path: Path, runners: list[ActionRunner]) -> None:
    rec = Recorder(tmp_path)
    runner = start(runners, Action(secrets=("*",), exec=rec.argv(), debounce=0, min_interval=2.0))
    runner.notify(changed("a"))
    rec.wait_runs(1)
    runner.notify(changed("b"))
    runner.notify(Changes(removed=frozenset({"c"})))
    runs = rec.wait_runs(2)
    assert [run["changed"] for run in runs] == ["a", "b\nc"]
    assert json.loads(runs[1]["kinds"]) == {"b": "changed", "c": "removed"}
    assert runs[1]["started"] - runs[0]["started"] >= 1.95
    stats = idle(runner)
    assert (stats["runs"], stats["failures"]) == (2, 0)


SIGNAL_TARGET = """\
import os, signal, sys, time
got = []
signal.signal(signal.SIGHUP, lambda *_: got.append(1))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
with open(sys.argv[2], "w") as f:
    f.write("SIGHUP" if got else "none")
"""


def test_a_pidfile_action_signals_the_process(tmp_path: Path, runners: list[ActionRunner]) -> None:
    script = tmp_path / "target.py"
    script.write_text(SIGNAL_TARGET)
    pid_file, result = tmp_path / "target.pid", tmp_path / "target.result"
    target = subprocess.Popen([sys.executable, str(script), str(pid_file), str(result)])
    try:
        wait_until(pid_file.exists, 10)
        runner = start(runners, Action(secrets=("tls/*",), pidfile=pid_file, debounce=0))
        runner.notify(changed("tls/cert"))
        assert target.wait(timeout=10) == 0
        assert result.read_text() == "SIGHUP"
        stats = idle(runner)
        assert (stats["runs"], stats["failures"]) == (1, 0)
        assert stats["last_result"] == f"sent SIGHUP to process {target.pid}"
    finally:
        target.kill()
        target.wait()


def test_a_missing_pidfile_or_a_dead_process_is_a_counted_failure(
    tmp_path: Path, runners: list[ActionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_file, empty_file = tmp_path / "dead.pid", tmp_path / "empty.pid"
    dead_file.write_text(f"{dead.pid}\n")
    empty_file.write_text("\n")
    runner = start(
        runners,
        Action(secrets=("*",), pidfile=tmp_path / "missing.pid", debounce=0),
        Action(secrets=("*",), pidfile=dead_file, debounce=0),
        Action(secrets=("*",), pidfile=empty_file, debounce=0),
    )
    with caplog.at_level(logging.WARNING, logger="secretfs.actions"):
        runner.notify(changed("x"))
        for index in range(3):
            assert stats_when(runner, index, "failures")["failures"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"cannot read the pid file {tmp_path / 'missing.pid'} (No such file or directory)" in m for m in messages
    )
    assert any(f"process {dead.pid} (from {dead_file}) is not running" in m for m in messages)
    assert any(f"the pid file {empty_file} holds no pid" in m for m in messages)


def test_reload_unit_runs_systemctl_reload(
    tmp_path: Path, runners: list[ActionRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    runner = start(runners, Action(secrets=("tls/*",), reload_unit="nginx.service", debounce=0))
    runner.notify(changed("tls/key"))
    assert wait_until(lambda: calls.exists() and calls.read_text(), 10) == "reload nginx.service\n"
    assert idle(runner)["failures"] == 0


def test_failures_are_logged_in_one_line_and_counted(
    tmp_path: Path, runners: list[ActionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    runner = start(
        runners,
        Action(secrets=("*",), exec=(str(tmp_path / "no-such-program"),), debounce=0),
        Action(secrets=("*",), shell="echo 'first line' >&2; echo second >&2; exit 3", debounce=0),
        Action(secrets=("*",), shell="kill -KILL $$", debounce=0),
    )
    with caplog.at_level(logging.INFO, logger="secretfs.actions"):
        runner.notify(changed("x"))
        stats = [stats_when(runner, index, "failures") for index in range(3)]
    assert [(s["runs"], s["failures"], s["timeouts"]) for s in stats] == [(1, 1, 0)] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("\n" not in w for w in warnings)
    assert any("exec no-such-program on *" in w and "cannot start" in w and "No such file" in w for w in warnings)
    assert any(w.endswith("failed: exit status 3; stderr: first line second") for w in warnings)
    assert any("failed: killed by SIGKILL" in w for w in warnings)


def test_a_long_stderr_is_cut_in_the_log(
    tmp_path: Path, runners: list[ActionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    runner = start(runners, Action(secrets=("*",), shell="yes x | head -c 100000 >&2; exit 1", debounce=0))
    with caplog.at_level(logging.WARNING, logger="secretfs.actions"):
        runner.notify(changed("x"))
        wait_until(lambda: runner.as_dict()[0]["failures"], 10)
    (line,) = [r.getMessage() for r in caplog.records]
    assert len(line.partition("stderr: ")[2]) <= 203


def test_attach_subscribes_a_runner_to_a_change_feed(tmp_path: Path, runners: list[ActionRunner]) -> None:
    store = MemoryStore()
    store.write("tls/cert", {"value": "one"})
    feed = ChangeFeed(store, poll_interval=0)
    feed.prime()
    rec = Recorder(tmp_path)
    assert attach(feed, ()) is None
    runner = attach(feed, [Action(secrets=("tls/*",), exec=rec.argv(), debounce=0, min_interval=0)])
    assert runner is not None
    runners.append(runner)
    feed.start(watch_store=False)
    try:
        store.write("tls/cert", {"value": "two"})
        store.write("tls/key", {"value": "new"})
        feed.hint(["tls/cert", "tls/key"])
        run = rec.wait_runs(1)[0]
        assert json.loads(run["kinds"]) == {"tls/cert": "changed", "tls/key": "added"}
    finally:
        feed.stop()


# ----- the configuration file -----------------------------------------------------------------------


GOOD = """\
[[action]]
secrets = ["tls/*"]
exec = ["nginx", "-s", "reload"]
"""


def test_a_file_with_every_kind_of_action(tmp_path: Path) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(
        GOOD
        + textwrap.dedent("""\
            debounce = 2
            timeout = 10.5
            min_interval = 0

            [[action]]
            secrets = ["db/*", "app"]
            shell = "echo changed | logger"

            [[action]]
            secrets = ["x"]
            pidfile = "/run/app.pid"
            signal = "usr1"

            [[action]]
            secrets = ["y"]
            pidfile = "/run/other.pid"

            [[action]]
            secrets = ["z"]
            reload_unit = "nginx.service"
            """)
    )
    exec_, shell, usr1, hup, reload = load_actions_file(path)
    assert exec_ == Action(secrets=("tls/*",), exec=("nginx", "-s", "reload"), debounce=2, timeout=10.5, min_interval=0)
    assert shell == Action(secrets=("db/*", "app"), shell="echo changed | logger")
    assert (usr1.pidfile, usr1.signal) == (Path("/run/app.pid"), signal.SIGUSR1)
    assert (hup.pidfile, hup.signal) == (Path("/run/other.pid"), signal.SIGHUP)
    assert reload.argv() == ["systemctl", "reload", "nginx.service"]
    assert (reload.debounce, reload.timeout, reload.min_interval) == (1.0, 30.0, 1.0)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('secrets = ["a"]\nexec = ["x"]\nretries = 3', "unknown key 'retries'"),
        ('secrets = ["a"]', "give exactly one of exec, shell, pidfile or reload_unit (found none)"),
        (
            'secrets = ["a"]\nexec = ["x"]\nshell = "x"',
            "give exactly one of exec, shell, pidfile or reload_unit (found exec and shell)",
        ),
        ('secrets = ["a"]\npidfile = "/run/x.pid"\nsignal = "NOPE"', "bad signal name 'NOPE'"),
        ('secrets = ["a"]\npidfile = "/run/x.pid"\nsignal = 1', 'signal must be a name like "HUP", not 1'),
        ('secrets = ["a"]\nexec = ["x"]\nsignal = "HUP"', "signal goes with pidfile"),
        ('secrets = []\nexec = ["x"]', "secrets must list at least one non-empty glob"),
        ('secrets = [""]\nexec = ["x"]', "secrets must list at least one non-empty glob"),
        ('secrets = "a"\nexec = ["x"]', "secrets must be a list of strings"),
        ('exec = ["x"]', "secrets is missing"),
        ('secrets = ["a"]\nexec = ["x"]\ndebounce = -1', "debounce must be 0 or more, not -1"),
        ('secrets = ["a"]\nexec = ["x"]\nmin_interval = -0.5', "min_interval must be 0 or more, not -0.5"),
        ('secrets = ["a"]\nexec = ["x"]\ntimeout = 0', "timeout must be above 0, not 0"),
        ('secrets = ["a"]\nexec = ["x"]\ntimeout = "30"', "timeout must be a number of seconds, not '30'"),
        ('secrets = ["a"]\nexec = ["x"]\ntimeout = inf', "timeout must be a number of seconds, not inf"),
        ('secrets = ["a"]\nexec = []', "exec must be a non-empty list"),
        ('secrets = ["a"]\nexec = "nginx -s reload"', "exec must be a list of strings"),
        ('secrets = ["a"]\nshell = " "', "shell must be a non-empty string"),
        ('secrets = ["a"]\npidfile = "run/x.pid"', "pidfile must be an absolute path"),
        ('secrets = ["a"]\nreload_unit = "--force"', "reload_unit '--force' is not a unit name"),
    ],
)
def test_a_bad_action_names_the_file_the_action_and_the_problem(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(GOOD + "\n[[action]]\n" + body + "\n")
    with pytest.raises(ConfigError) as caught:
        load_actions_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: action 2: {problem}")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no [[action]] table"),
        ("[[actions]]\nsecrets = ['a']", "unknown top-level key 'actions'"),
        ("action = 3", "no [[action]] table"),
        ("action = [1]", "action 1: is not a table"),
        ("[[action]\n", "not valid TOML: "),
    ],
)
def test_a_bad_file(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_actions(text, "/etc/secretfs/actions.toml")
    assert str(caught.value).startswith(f"/etc/secretfs/actions.toml: {problem}")
    assert "\n" not in str(caught.value)


def test_the_file_must_be_owned_by_this_user_and_writable_by_nobody_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(GOOD)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"unsafe actions file .*writable by group or others \(mode 0666\)"):
        load_actions_file(path)
    with caplog.at_level(logging.WARNING):
        assert len(load_actions_file(path, allow_unsafe=True)) == 1
    assert any("SECRETFS_ALLOW_UNSAFE_DATA_DIR is set" in r.getMessage() for r in caplog.records)
    path.chmod(0o644)
    assert len(load_actions_file(path)) == 1
    if os.geteuid() == 0:
        os.chown(path, 12345, -1)
        with pytest.raises(ConfigError, match=r"owned by uid 12345, not by uid 0"):
            load_actions_file(path)
        os.chown(path, 0, -1)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(ConfigError, match="its directory is writable by group or others"):
            load_actions_file(path)
    finally:
        tmp_path.chmod(0o700)
    with pytest.raises(ConfigError, match="does not exist"):
        load_actions_file(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_actions_file(tmp_path)


# ----- flags ----------------------------------------------------------------------------------------


def test_flags() -> None:
    exec_ = parse_exec_flag("tls/*=nginx -s reload -c '/etc/my nginx.conf'")
    assert exec_ == Action(secrets=("tls/*",), exec=("nginx", "-s", "reload", "-c", "/etc/my nginx.conf"))
    assert exec_.shell is None
    hup = parse_signal_flag("tls/*=/run/nginx.pid")
    assert (hup.pidfile, hup.signal) == (Path("/run/nginx.pid"), signal.SIGHUP)
    usr2 = parse_signal_flag("db/*=/run/app.pid:SIGUSR2")
    assert (usr2.secrets, usr2.pidfile, usr2.signal) == (("db/*",), Path("/run/app.pid"), signal.SIGUSR2)
    relative = parse_signal_flag("a=app.pid:term")
    assert (relative.pidfile, relative.signal) == (Path("app.pid").absolute(), signal.SIGTERM)
    assert parse_reload_flag("tls/*=nginx.service").reload_unit == "nginx.service"


@pytest.mark.parametrize(
    ("parse", "value", "problem"),
    [
        (parse_exec_flag, "nginx -s reload", "--on-change-exec 'nginx -s reload' is not GLOB=COMMAND ARGS"),
        (parse_exec_flag, "=nginx", "--on-change-exec '=nginx' is not GLOB=COMMAND ARGS"),
        (parse_exec_flag, "a=", "--on-change-exec 'a=' is not GLOB=COMMAND ARGS"),
        (parse_exec_flag, "a=echo 'x", '--on-change-exec "a=echo \'x": cannot split the command'),
        (parse_signal_flag, "a=/run/x.pid:NOPE", "--on-change-signal 'a=/run/x.pid:NOPE': bad signal name 'NOPE'"),
        (parse_signal_flag, "a=:HUP", "--on-change-signal 'a=:HUP' is not GLOB=PIDFILE[:SIGNAL]"),
        (parse_reload_flag, "a", "--on-change-reload 'a' is not GLOB=UNIT"),
        (parse_reload_flag, "a=-x", "--on-change-reload 'a=-x': reload_unit '-x' is not a unit name"),
    ],
)
def test_bad_flags(parse: Any, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(value)
    assert str(caught.value).startswith(problem)


def test_file_and_flags_combine(tmp_path: Path) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(GOOD)
    actions = actions_from_options(
        actions_file=path,
        exec_flags=("a=true",),
        signal_flags=("b=/run/b.pid",),
        reload_flags=("c=c.service",),
    )
    assert [a.kind for a in actions] == ["exec", "exec", "signal", "reload"]
    assert [a.secrets for a in actions] == [("tls/*",), ("a",), ("b",), ("c",)]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--on-change-signal", "a=/run/x.pid:FOO"], "--on-change-signal 'a=/run/x.pid:FOO': bad signal name 'FOO'"),
        (["--on-change-exec", "nothing"], "--on-change-exec 'nothing' is not GLOB=COMMAND ARGS"),
        (["--actions", "{missing}"], "the actions file {missing} does not exist"),
        (["--actions", "{bad}"], "{bad}: action 1: unknown key 'exce'"),
    ],
)
def test_mount_refuses_bad_actions_in_one_line(tmp_path: Path, args: list[str], problem: str) -> None:
    instance = make_instance(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[action]]\nsecrets = ["a"]\nexce = ["x"]\n')
    paths = {"missing": str(tmp_path / "missing.toml"), "bad": str(bad)}
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    args = [arg.format(**paths) for arg in args]
    result = instance.cli("mount", str(mountpoint), *args, check=False)
    assert result.returncode == 3
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"secretfs: error: {problem.format(**paths)}")
    assert not instance.data_dir.exists()  # refused before anything was made
