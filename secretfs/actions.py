"""On-change actions: run a command, signal a process or reload a systemd unit when secrets change.

An `Action` names secrets by fnmatch globs over their full names and says what to do. The
`ActionRunner` takes the change feed's reports (`notify`, on the feed's thread: it only records
them) and gives each action its own worker thread, so a hanging action never delays another:

- debounce: a burst of changes (a certificate, then its key) gives one run, `debounce` seconds
  after the last change (but no later than MAX_DEBOUNCE times `debounce` after the first one, so
  changes that never pause still run it);
- rate limit: two starts of one action are at least `min_interval` apart; changes in between are
  kept and coalesced into the next run, never dropped;
- timeout: a command still running after `timeout` seconds gets SIGTERM on its whole process
  group, then SIGKILL 2 s later.

A child gets the daemon's environment without any variable that could carry key or secret
material (`child_environment`), plus SECRETFS_CHANGED (the changed names that match the action's
globs, one a line) and SECRETFS_CHANGE_KINDS (JSON {name: "added" | "changed" | "removed"}):
names, never values. stdin is /dev/null, stdout is discarded; on failure the first 200 characters
of stderr are logged. A failure (non-zero exit, a command that cannot start, a missing pid file, a
process that is gone) or a timeout is logged in one line and counted; nothing raises out of the
runner.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secretfs.changes import ChangeFeed, Changes

log = logging.getLogger(__name__)

ENV_CHANGED = "SECRETFS_CHANGED"
ENV_CHANGE_KINDS = "SECRETFS_CHANGE_KINDS"
MAX_DEBOUNCE = 5  # a run waits at most this many debounce periods after the first pending change
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out action's process group
STDERR_LOGGED = 200  # characters of a failed command's stderr that reach the log
_STDERR_KEPT = 4096  # bytes of stderr read into memory; the rest is read and dropped
# Never passed to a child: anything that may carry key or secret material, and the daemon's own
# channels to systemd.
_DROPPED_PREFIXES = ("ARCHESTRA_",)
_DROPPED_PARTS = ("ENCRYPTION_KEY", "VAULT_TOKEN", "SECRET", "TOKEN", "PASSWORD")
_DROPPED_NAMES = frozenset({"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"})

Kind = str  # "added", "changed" or "removed" (secretfs.changes.Changes.kind)


@dataclass(frozen=True)
class Action:
    """What to do when a secret matching one of `secrets` changes: exactly one of exec, shell,
    pidfile (+ signal) or reload_unit."""

    secrets: tuple[str, ...]
    exec: tuple[str, ...] = ()
    shell: str | None = None
    pidfile: Path | None = None
    signal: signal.Signals = signal.SIGHUP
    reload_unit: str | None = None
    debounce: float = 1.0
    timeout: float = 30.0
    min_interval: float = 1.0

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """What is wrong with this action, or None."""
        if not self.secrets or any(not isinstance(g, str) or not g for g in self.secrets):
            return "secrets must be a non-empty list of non-empty globs"
        chosen = [bool(self.exec), self.shell is not None, self.pidfile is not None, self.reload_unit is not None]
        if sum(chosen) != 1:
            return "give exactly one of exec, shell, pidfile or reload_unit"
        if self.exec and any(not isinstance(a, str) for a in self.exec):
            return "exec must be a list of strings"
        if self.exec and not self.exec[0]:
            return "exec needs a command"
        if self.shell is not None and not self.shell.strip():
            return "shell needs a command"
        if self.reload_unit is not None and (
            self.reload_unit.startswith("-") or any(c.isspace() for c in self.reload_unit)
        ):
            return f"reload_unit {self.reload_unit!r} is not a unit name"
        for key in ("debounce", "timeout", "min_interval"):
            seconds = getattr(self, key)
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
                return f"{key} must be a finite number of seconds, 0 or more"
        if self.timeout <= 0:
            return "timeout must be above 0"
        return None

    @property
    def kind(self) -> str:
        """exec, shell, signal or reload."""
        if self.exec:
            return "exec"
        if self.shell is not None:
            return "shell"
        if self.pidfile is not None:
            return "signal"
        return "reload"

    def matches(self, name: str) -> bool:
        """Whether a full secret name matches one of the globs (fnmatch, case-sensitive; `*` matches `/`)."""
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.secrets)

    def describe(self) -> str:
        """A short label for logs: the kind, the program or target, and the globs (never the full
        command line, which is the user's)."""
        if self.exec:
            what = f"exec {Path(self.exec[0]).name}"
        elif self.shell is not None:
            what = "shell command"
        elif self.pidfile is not None:
            what = f"{self.signal.name} to the pid in {self.pidfile}"
        else:
            what = f"reload {self.reload_unit}"
        return f"{what} on {', '.join(self.secrets)}"

    def argv(self) -> list[str]:
        """The command line of a command action (exec, shell, reload)."""
        if self.exec:
            return list(self.exec)
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        if self.reload_unit is not None:
            return ["systemctl", "reload", self.reload_unit]
        raise ValueError("a signal action has no command line")


def _dropped(variable: str) -> bool:
    upper = variable.upper()
    return (
        upper.startswith(_DROPPED_PREFIXES) or upper in _DROPPED_NAMES or any(part in upper for part in _DROPPED_PARTS)
    )


def child_environment(changes: Mapping[str, Kind], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an action's command: base (the daemon's) without any variable that may carry
    key or secret material, plus the changed names and their kinds (never a value)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not _dropped(k)}
    env[ENV_CHANGED] = "\n".join(sorted(changes))
    env[ENV_CHANGE_KINDS] = json.dumps(dict(sorted(changes.items())), ensure_ascii=False)
    return env


def merge_kind(old: Kind | None, new: Kind) -> Kind:
    """The kind of two changes of one name in a row, as one change."""
    if new == "removed" or old is None:
        return new
    if old == "added":
        return "added"
    return "changed"


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _StderrReader(threading.Thread):
    """Reads a child's stderr pipe to its end: the first bytes are kept, the rest dropped."""

    def __init__(self, fd: int, label: str) -> None:
        super().__init__(name=f"secretfs-action-stderr {label}", daemon=True)
        self.fd = fd
        self.kept = bytearray()

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 65536):
                if len(self.kept) < _STDERR_KEPT:
                    self.kept += chunk[: _STDERR_KEPT - len(self.kept)]
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", "replace").strip()
        text = " ".join(text.split())  # one log line
        return text[:STDERR_LOGGED] + ("..." if len(text) > STDERR_LOGGED else "")


class _Worker:
    """One action's thread: waits for changes, debounces, rate-limits, runs, counts."""

    def __init__(self, action: Action, label: str, prepare: Callable[[Sequence[str]], None] | None) -> None:
        self.action = action
        self.label = label
        self.prepare = prepare
        self._cond = threading.Condition()
        self._pending: dict[str, Kind] = {}
        self._due = 0.0  # monotonic: when the pending changes are due (see offer)
        self._first = 0.0  # monotonic: the first pending change
        self._last_start: float | None = None
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._running = False
        self.runs = 0
        self.failures = 0
        self.timeouts = 0
        self.last_run: float | None = None  # wall-clock time of the last start
        self.last_result: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"secretfs-action {label}", daemon=True)

    # ----- the feed's side ----------------------------------------------------------------------

    def offer(self, changes: Mapping[str, Kind]) -> None:
        matched = {name: kind for name, kind in changes.items() if self.action.matches(name)}
        if not matched:
            return
        with self._cond:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            for name, kind in matched.items():
                self._pending[name] = merge_kind(self._pending.get(name), kind)
            self._due = min(now + self.action.debounce, self._first + MAX_DEBOUNCE * self.action.debounce)
            self._cond.notify_all()

    # ----- the worker's side --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _next_batch(self) -> dict[str, Kind] | None:
        """Wait until a run is due; the changes it is for, or None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                if self._pending:
                    start_at = self._due
                    if self._last_start is not None:
                        start_at = max(start_at, self._last_start + self.action.min_interval)
                    if now >= start_at:
                        batch, self._pending = self._pending, {}
                        self._last_start = now
                        self._running = True
                        return batch
                    self._cond.wait(start_at - now)
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # never out of the runner; never a value in the message
                self._fail(f"failed unexpectedly ({type(exc).__name__})")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _fail(self, reason: str, *, timed_out: bool = False) -> None:
        with self._cond:
            self.failures += 1
            if timed_out:
                self.timeouts += 1
            self.last_result = reason
        log.warning("action %s %s", self.label, reason)

    def _ok(self, result: str, names: int, elapsed: float) -> None:
        with self._cond:
            self.last_result = result
        log.info("action %s ran for %d changed secret(s): %s in %.2f s", self.label, names, result, elapsed)

    def _run(self, batch: dict[str, Kind]) -> None:
        if self.prepare is not None:
            # The mount serves the new values before the action looks at them.
            try:
                self.prepare(sorted(batch))
            except Exception as exc:
                log.warning("action %s: the mount could not refresh first (%s)", self.label, type(exc).__name__)
        with self._cond:
            self.runs += 1
            self.last_run = time.time()
        started = time.monotonic()
        if self.action.pidfile is not None:
            self._signal(self.action.pidfile, self.action.signal, len(batch), started)
        else:
            self._command(batch, started)

    def _signal(self, pidfile: Path, sig: signal.Signals, names: int, started: float) -> None:
        try:
            text = pidfile.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            self._fail(f"failed: cannot read the pid file {pidfile} ({exc.strerror})")
            return
        if not text.isdigit() or int(text) <= 0:
            self._fail(f"failed: the pid file {pidfile} holds no pid")
            return
        pid = int(text)
        if pid == os.getpid():
            self._fail(f"failed: the pid file {pidfile} names secretfs itself")
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self._fail(f"failed: process {pid} (from {pidfile}) is not running")
            return
        except OSError as exc:
            self._fail(f"failed: cannot signal process {pid} (from {pidfile}): {exc.strerror}")
            return
        self._ok(f"sent {sig.name} to process {pid}", names, time.monotonic() - started)

    def _command(self, batch: dict[str, Kind], started: float) -> None:
        argv = self.action.argv()
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                argv,
                env=child_environment(batch),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=write_end,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_end)
            self._fail(f"failed: cannot start {argv[0]} ({exc.strerror or type(exc).__name__})")
            return
        finally:
            os.close(write_end)
        reader = _StderrReader(read_end, self.label)
        reader.start()
        with self._cond:
            self._proc = proc
            stopping = self._stopping
        timed_out = False
        try:
            # When stop() came while it started, stop() did not see this child: stop it here.
            code = self._kill(proc) if stopping else proc.wait(timeout=self.action.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            code = self._kill(proc)
        finally:
            with self._cond:
                self._proc = None
        reader.join(0.5)  # a grandchild may hold stderr open: the reader then finishes on its own
        elapsed = time.monotonic() - started
        with self._cond:
            stopping = self._stopping
        if stopping and code != 0:
            log.info("action %s stopped with the mount (%s)", self.label, _describe_status(code))
        elif timed_out:
            self._fail(
                f"timed out after {self.action.timeout:g} s: its process group was stopped ({_describe_status(code)})",
                timed_out=True,
            )
        elif code != 0:
            stderr = reader.text()
            self._fail(f"failed: {_describe_status(code)}" + (f"; stderr: {stderr}" if stderr else ""))
        else:
            self._ok(_describe_status(code), len(batch), elapsed)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM to the process group, SIGKILL after KILL_GRACE; the leader's status."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            code = None
        # The leader may be gone while others of its group are not.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait() if code is None else code

    # ----- stopping -----------------------------------------------------------------------------

    def begin_stop(self) -> subprocess.Popen[bytes] | None:
        """Stop taking runs; SIGTERM to the running command's group. The running child, if any."""
        with self._cond:
            self._stopping = True
            if self._pending:
                log.info("action %s: not run for %d change(s): the mount is stopping", self.label, len(self._pending))
                self._pending = {}
            self._cond.notify_all()
            proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        return proc

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def as_dict(self) -> dict[str, Any]:
        with self._cond:
            return {
                "action": self.label,
                "runs": self.runs,
                "failures": self.failures,
                "timeouts": self.timeouts,
                "last_run": self.last_run,
                "last_result": self.last_result,
                "pending": sorted(self._pending),
                "running": self._running,
            }


class ActionRunner:
    """Runs the actions for the changes it is told about, each on its own thread."""

    def __init__(self, actions: Sequence[Action], *, prepare: Callable[[Sequence[str]], None] | None = None) -> None:
        """prepare(names), if given, runs on an action's thread before the action: the daemon passes
        the mount's coherence refresh, so the action sees the new values through the mount."""
        self.actions = tuple(actions)
        self._workers = [
            _Worker(action, f"{index} ({action.describe()})", prepare) for index, action in enumerate(actions, 1)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for worker in self._workers:
                worker.start()

    def notify(self, changes: Changes) -> None:
        """Record changes for the actions whose globs match (the feed's thread: never waits on an action)."""
        kinds: dict[str, Kind] = {name: changes.kind(name) for name in changes.names}
        for worker in self._workers:
            worker.offer(kinds)

    def stop(self, timeout: float = KILL_GRACE + 1.0) -> None:
        """Stop every worker and the commands they run: SIGTERM, then SIGKILL after KILL_GRACE.
        Returns within about `timeout` seconds."""
        deadline = time.monotonic() + timeout
        running = [proc for worker in self._workers if (proc := worker.begin_stop()) is not None]
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, min(KILL_GRACE, deadline - time.monotonic())))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def as_dict(self) -> list[dict[str, Any]]:
        """Each action's counters, for `status`."""
        return [worker.as_dict() for worker in self._workers]


def attach(
    feed: ChangeFeed,
    actions: Sequence[Action],
    *,
    prepare: Callable[[Sequence[str]], None] | None = None,
) -> ActionRunner | None:
    """Start a runner for actions and subscribe it to feed; None when there are no actions."""
    if not actions:
        return None
    runner = ActionRunner(actions, prepare=prepare)
    runner.start()
    feed.subscribe(runner.notify)
    log.info("%d on-change action(s) configured", len(runner.actions))
    return runner
