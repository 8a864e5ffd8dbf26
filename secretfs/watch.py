"""`secretfs watch`: wait for secrets to change, then name them, or run a command once per change.

The watch opens the store itself and runs its own `ChangeFeed` (secretfs.changes), so it works with
or without a mount: the baseline is read first (nothing is printed for it), then changes come from
the store's own watcher, from the control socket (a `secretfs put`/`rm` or a mount's write on this
host reaches it at once, as it reaches a mount) and from a poll every `--interval` seconds. A
change is a change of a value (added, changed, removed): the same value put again is none.

Patterns are matched with `fnmatch.fnmatchcase` against the full secret name: `*` and `?` also
match `/` (`tls/*` matches `tls/a` and `tls/a/b`), `[...]` is a set of characters; a pattern with
none of `*?[` is an exact name. Nothing this module prints or hands to a command carries a value.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import click

from secretfs import control
from secretfs.actions import child_environment
from secretfs.config import Settings
from secretfs.errors import EXIT_OK, EXIT_TIMEOUT, ConfigError

if TYPE_CHECKING:
    from secretfs.changes import ChangeFeed, Changes

log = logging.getLogger(__name__)

GLOB_CHARS = "*?["
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
COMMAND_KEY = "secretfs.watch.command"  # where WatchCommand keeps CMD ARGS in the click context
CHILD_GRACE = 5.0  # seconds a running CMD gets to exit after SIGTERM when the watch is stopped


class WatchCommand(click.Command):
    """A click command whose arguments after the first `--` are a command to run (CMD ARGS), kept
    apart from the names (click itself would hand them to the NAME arguments)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[COMMAND_KEY] = tuple(args[cut + 1 :])
            args = args[:cut]
        return super().parse_args(ctx, args)


def command_of(ctx: click.Context) -> tuple[str, ...]:
    """The CMD ARGS given after `--` (empty without)."""
    command: tuple[str, ...] = ctx.meta.get(COMMAND_KEY, ())
    return command


# ----- names -----------------------------------------------------------------------------------------


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


class Patterns:
    """The NAME|GLOB arguments: which secret names they select."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) if is_glob(p) else name == p for p in self.patterns)

    @property
    def prefix(self) -> str:
        """The longest prefix every selected name starts with (what the feed needs to read)."""
        heads = [p[: min((p.index(c) for c in GLOB_CHARS if c in p), default=len(p))] for p in self.patterns]
        # Character by character on purpose: a store prefix is a plain string prefix, not a path.
        return os.path.commonprefix(heads) if heads else ""  # noqa: RUF071

    def only(self, changes: Changes) -> Changes:
        """The part of changes that concerns the selected names."""
        from secretfs.changes import Changes

        def keep(names: frozenset[str]) -> frozenset[str]:
            return frozenset(n for n in names if self.matches(n))

        return Changes(keep(changes.added), keep(changes.changed), keep(changes.removed))


def merge(first: Changes, then: Changes) -> Changes:
    """Two batches seen one after the other, as one: added then changed is added, removed then added
    is changed; otherwise the later kind wins."""
    from secretfs.changes import Changes

    kinds: dict[str, str] = {name: first.kind(name) for name in first.names}
    for name in then.names:
        before, now = kinds.get(name), then.kind(name)
        if before == "added" and now == "changed":
            continue
        kinds[name] = "changed" if before == "removed" and now == "added" else now
    return Changes(
        frozenset(n for n, k in kinds.items() if k == "added"),
        frozenset(n for n, k in kinds.items() if k == "changed"),
        frozenset(n for n, k in kinds.items() if k == "removed"),
    )


# ----- what a command gets ----------------------------------------------------------------------------


def child_env(base: Mapping[str, str], changes: Changes) -> dict[str, str]:
    """CMD's environment: the one an on-change action's command gets (secretfs.actions): base without
    any variable that may carry key or secret material, plus the names that changed and their kinds."""
    return child_environment({name: changes.kind(name) for name in changes.names}, base)


# ----- running ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    """What `secretfs watch` was asked to do."""

    patterns: tuple[str, ...]
    as_json: bool = False
    wait_timeout: float | None = None  # without CMD: give up (EXIT_TIMEOUT) after this long
    interval: float = 5.0  # poll interval; 0: no polling
    command: tuple[str, ...] = ()


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: the watch ends, exit 0."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into Stopped (in the main thread); later ones are ignored."""
    received = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if not received:
            received = True
            raise Stopped

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (threads started inside never take them)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_command(command: Sequence[str]) -> None:
    """CMD must be something that can run: refused at the start, not at the first change."""
    program = command[0]
    if "/" in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise click.UsageError(f"{program} is not an executable file")
    elif shutil.which(program) is None:
        raise click.UsageError(f"{program}: command not found in PATH")


def run(settings: Settings, options: WatchOptions) -> int:
    """Watch until the first matching change (printed) or forever with CMD; returns the exit code."""
    if settings.mode == "DB" and settings.encryption_secret is None:
        raise ConfigError(
            "no encryption secret is configured and no key file exists: nothing is stored yet "
            "(store a secret first, or set ARCHESTRA_SECRETS_ENCRYPTION_SECRET)"
        )
    try:
        with stop_on_signals():
            return _watch(settings, options)
    except Stopped:
        return EXIT_OK


def _watch(settings: Settings, options: WatchOptions) -> int:
    from secretfs.changes import ChangeFeed
    from secretfs.stores import open_store

    patterns = Patterns(options.patterns)
    batches: queue.SimpleQueue[Changes] = queue.SimpleQueue()

    def offer(changes: Changes) -> None:  # on the feed's thread: only a queue put
        mine = patterns.only(changes)
        if mine:
            batches.put(mine)

    with contextlib.ExitStack() as cleanup:
        store = open_store(settings, read_only=True)
        cleanup.callback(store.close)
        feed = ChangeFeed(store, prefix=patterns.prefix, poll_interval=options.interval)
        feed.subscribe(offer)
        feed.prime()  # the baseline: only what changes after this counts
        with signals_held():  # a stop signal cannot come between starting and registering the stop
            feed.start(watch_store=True)
            cleanup.callback(feed.stop)
        with signals_held():  # nor between making the socket file and registering its removal
            server = _listen(settings, feed)
            if server is not None:
                cleanup.callback(server.close)
        feed.hint(None)  # anything that changed between the baseline and listening
        log.info("watching %s (%d secrets now)", " ".join(options.patterns), len(feed.known))
        if options.command:
            _run_commands(batches, options.command)
        return _wait_once(batches, options)


def _listen(settings: Settings, feed: ChangeFeed) -> control.ControlServer | None:
    """A control socket like a mount's: this host's writers tell the watch at once."""

    def on_changed(names: Sequence[str]) -> None:
        feed.hint(None if control.ALL in names else names)

    try:
        server = control.ControlServer(control.store_id(settings), on_changed)
    except OSError as exc:
        log.warning("no control socket (%s): changes are seen by polling (--interval)", exc.strerror or exc)
        return None
    server.start()
    return server


def _take(batches: queue.SimpleQueue[Changes], timeout: float | None) -> Changes | None:
    """The next batch merged with any already waiting behind it; None when timeout passed."""
    try:
        changes = batches.get(timeout=timeout)
    except queue.Empty:
        return None
    while True:
        try:
            changes = merge(changes, batches.get_nowait())
        except queue.Empty:
            return changes


def _wait_once(batches: queue.SimpleQueue[Changes], options: WatchOptions) -> int:
    deadline = None if options.wait_timeout is None else time.monotonic() + options.wait_timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            click.echo(f"secretfs: no change within {options.wait_timeout:g} s", err=True)
            return EXIT_TIMEOUT
        changes = _take(batches, left)
        if changes is not None:
            _print(changes, as_json=options.as_json)
            return EXIT_OK


def _print(changes: Changes, *, as_json: bool) -> None:
    """One line per name: the name (as `secretfs ls` prints it), or a JSON record."""
    from secretfs.cli import display_name

    now = time.time()
    for name in sorted(changes.names):
        if as_json:
            record = {"name": name, "change": changes.kind(name), "time": now}
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(display_name(name))
    sys.stdout.flush()


def _run_commands(batches: queue.SimpleQueue[Changes], command: tuple[str, ...]) -> NoReturn:
    """Run command once per batch, one at a time, forever; batches that arrive while it runs are
    merged into the next run."""
    while True:
        changes = _take(batches, None)
        if changes is not None:
            run_command(command, changes)


def run_command(command: Sequence[str], changes: Changes) -> int | None:
    """Run command for one batch and wait for it; a failure is one line on stderr. Returns its exit
    status (None: it could not start). A stop signal while it runs stops it too (SIGTERM, then
    SIGKILL after CHILD_GRACE seconds)."""
    try:
        child = subprocess.Popen(list(command), env=child_env(os.environ, changes), stdin=subprocess.DEVNULL)
    except OSError as exc:
        click.echo(f"secretfs: error: cannot run {command[0]}: {exc.strerror or exc}", err=True)
        return None
    try:
        status: int = child.wait()
    except Stopped:
        _end(child)
        raise
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        click.echo(f"secretfs: warning: {command[0]} {how}; still watching", err=True)
    return status


def _end(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        child.terminate()
    try:
        child.wait(timeout=CHILD_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            child.kill()
        child.wait()
