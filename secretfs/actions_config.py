"""Loading on-change actions: from a TOML file (`--actions FILE`) and from `secretfs mount` flags.

The file holds one `[[action]]` table per action:

    [[action]]
    secrets = ["tls/*"]                  # fnmatch globs over full secret names
    exec = ["nginx", "-s", "reload"]     # or: shell = "..."; or: pidfile = "/run/x.pid", signal = "HUP";
                                         # or: reload_unit = "nginx.service"
    debounce = 1.0                       # seconds after the last change of a burst
    timeout = 30                         # seconds, then the command's process group is killed
    min_interval = 1.0                   # seconds between two starts

Actions run as the daemon's user (root under systemd), so the file must be owned by that user and
not writable by group or others (the data directory's rule; SECRETFS_ALLOW_UNSAFE_DATA_DIR=1
turns the refusal into a warning). Every problem is a ConfigError of one line naming the file, the
action's number (from 1) and the problem.

Flags: `--on-change-exec 'GLOB=COMMAND ARGS'` (split like a shell would, run without one),
`--on-change-signal 'GLOB=PIDFILE[:SIGNAL]'` and `--on-change-reload 'GLOB=UNIT'`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from secretfs.actions import Action
from secretfs.config import ENV_ALLOW_UNSAFE_DATA_DIR
from secretfs.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

KEYS = frozenset(
    {"secrets", "exec", "shell", "pidfile", "signal", "reload_unit", "debounce", "timeout", "min_interval"}
)
WHAT = ("exec", "shell", "pidfile", "reload_unit")


def parse_signal(text: str) -> signal.Signals:
    """A signal by name: HUP, SIGHUP, hup, usr1 ..."""
    name = text.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"bad signal name {text!r} (use a name like HUP, USR1, TERM)") from None


def _seconds(table: dict[str, Any], key: str, default: float, *, positive: bool = False) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{key} must be {'above 0' if positive else '0 or more'}, not {value!r}")
    return float(value)


def _strings(table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(value)


def action_from_table(table: dict[str, Any]) -> Action:
    """One [[action]] table as an Action; ValueError saying what is wrong."""
    if not isinstance(table, dict):
        raise ValueError("is not a table (write [[action]] with keys under it)")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(KEYS))})")
    if "secrets" not in table:
        raise ValueError('secrets is missing (a list of globs, like ["tls/*"])')
    globs = _strings(table, "secrets")
    if not globs or any(not glob for glob in globs):
        raise ValueError("secrets must list at least one non-empty glob")
    chosen = [key for key in WHAT if key in table]
    if len(chosen) != 1:
        found = f"found {' and '.join(chosen)}" if chosen else "found none"
        raise ValueError(f"give exactly one of exec, shell, pidfile or reload_unit ({found})")
    if "signal" in table and "pidfile" not in table:
        raise ValueError("signal goes with pidfile")
    what = chosen[0]
    fields: dict[str, Any] = {
        "secrets": globs,
        "debounce": _seconds(table, "debounce", 1.0),
        "timeout": _seconds(table, "timeout", 30.0, positive=True),
        "min_interval": _seconds(table, "min_interval", 1.0),
    }
    if what == "exec":
        argv = _strings(table, "exec")
        if not argv or not argv[0]:
            raise ValueError("exec must be a non-empty list: the program, then its arguments")
        fields["exec"] = argv
    elif what == "shell":
        if not isinstance(table["shell"], str) or not table["shell"].strip():
            raise ValueError("shell must be a non-empty string")
        fields["shell"] = table["shell"]
    elif what == "pidfile":
        if not isinstance(table["pidfile"], str) or not table["pidfile"].startswith("/"):
            raise ValueError("pidfile must be an absolute path")
        fields["pidfile"] = Path(table["pidfile"])
        raw = table.get("signal", "HUP")
        if not isinstance(raw, str):
            raise ValueError(f'signal must be a name like "HUP", not {raw!r}')
        fields["signal"] = parse_signal(raw)
    else:
        if not isinstance(table["reload_unit"], str) or not table["reload_unit"]:
            raise ValueError('reload_unit must be a unit name like "nginx.service"')
        fields["reload_unit"] = table["reload_unit"]
    return Action(**fields)  # its own checks raise ValueError too


def toml_document(text: str, source: str) -> dict[str, Any]:
    """A TOML configuration document (the actions file, the policy file); ConfigError naming source."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def numbered_tables(document: dict[str, Any], key: str, source: str, parse: Callable[[Any], T]) -> tuple[T, ...]:
    """Each [[key]] table of document, parsed; ConfigError naming source, the table's number and the
    problem (the ValueError parse raised)."""
    tables = document.get(key)
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{source}: no [[{key}]] table")
    parsed = []
    for number, table in enumerate(tables, 1):
        try:
            parsed.append(parse(table))
        except ValueError as exc:
            raise ConfigError(f"{source}: {key} {number}: {exc}") from None
    return tuple(parsed)


def parse_actions(text: str, source: str) -> tuple[Action, ...]:
    """The actions of a TOML document; ConfigError naming source, the action's number and the problem."""
    document = toml_document(text, source)
    unknown = sorted(set(document) - {"action"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (write each action as an [[action]] table)")
    return numbered_tables(document, "action", source, action_from_table)


def check_actions_file(path: Path, *, allow_unsafe: bool = False, what: str = "actions file", why: str = "") -> None:
    """Refuse an actions file (or another file of `what` kind: the policy file) another user could have
    written: the file or its directory not owned by this user (or root, for the directory), or writable
    by group or others (a directory with the sticky bit, like /tmp, may be). The commands in it run as
    this user; `why` says what else makes it matter."""
    euid = os.geteuid()
    problems = []
    try:
        st = os.stat(path)
        parent = os.stat(path.absolute().parent)
    except FileNotFoundError:
        raise ConfigError(f"the {what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot inspect the {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"the {what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != euid:
        problems.append(f"owned by uid {st.st_uid}, not by uid {euid}")
    if mode & 0o022:
        problems.append(f"writable by group or others (mode {mode:04o})")
    if parent.st_uid not in (euid, 0):
        problems.append(f"its directory is owned by uid {parent.st_uid}")
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        problems.append("its directory is writable by group or others")
    if not problems:
        return
    head = f"unsafe {what} {path} ({', '.join(problems)})"
    message = (
        f"{head}: {why or f'its commands run as uid {euid}'}, and another user "
        f"could have changed {'it' if why else 'them'}. "
        f"Fix it (chown {euid}, chmod 600 or 644, and its directory), or set "
        f"{ENV_ALLOW_UNSAFE_DATA_DIR}=1 to use it anyway"
    )
    if not allow_unsafe:
        raise ConfigError(message)
    log.warning("%s: using it because %s is set", head, ENV_ALLOW_UNSAFE_DATA_DIR)


def load_actions_file(path: Path, *, allow_unsafe: bool = False) -> tuple[Action, ...]:
    """The actions of a TOML file owned by this user and writable by nobody else."""
    check_actions_file(path, allow_unsafe=allow_unsafe)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the actions file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_actions(text, str(path))


def _split_flag(flag: str, value: str, form: str) -> tuple[str, str]:
    glob, sep, rest = value.partition("=")
    if not sep or not glob or not rest.strip():
        raise ConfigError(f"{flag} {value!r} is not {form}")
    return glob, rest


def _flag_action(flag: str, value: str, **fields: Any) -> Action:
    try:
        return Action(**fields)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from None


def parse_exec_flag(value: str) -> Action:
    """--on-change-exec 'GLOB=COMMAND ARGS': the command split as a shell would, run without one."""
    flag = "--on-change-exec"
    glob, command = _split_flag(flag, value, "GLOB=COMMAND ARGS")
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: cannot split the command ({exc})") from None
    return _flag_action(flag, value, secrets=(glob,), exec=argv)


def parse_signal_flag(value: str) -> Action:
    """--on-change-signal 'GLOB=PIDFILE[:SIGNAL]' (SIGHUP by default; a relative path is made absolute)."""
    flag = "--on-change-signal"
    glob, target = _split_flag(flag, value, "GLOB=PIDFILE[:SIGNAL]")
    pidfile, sep, name = target.rpartition(":")
    if not sep:
        pidfile, name = target, "HUP"
    if not pidfile:
        raise ConfigError(f"{flag} {value!r} is not GLOB=PIDFILE[:SIGNAL]")
    try:
        sig = parse_signal(name)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from None
    return _flag_action(flag, value, secrets=(glob,), pidfile=Path(pidfile).absolute(), signal=sig)


def parse_reload_flag(value: str) -> Action:
    """--on-change-reload 'GLOB=UNIT': `systemctl reload UNIT`."""
    flag = "--on-change-reload"
    glob, unit = _split_flag(flag, value, "GLOB=UNIT")
    return _flag_action(flag, value, secrets=(glob,), reload_unit=unit.strip())


def actions_from_options(
    *,
    actions_file: Path | None,
    exec_flags: tuple[str, ...] = (),
    signal_flags: tuple[str, ...] = (),
    reload_flags: tuple[str, ...] = (),
    allow_unsafe: bool = False,
) -> tuple[Action, ...]:
    """Every action of a mount: the file's first, then the flags', in their order."""
    actions: list[Action] = []
    if actions_file is not None:
        actions.extend(load_actions_file(actions_file, allow_unsafe=allow_unsafe))
    actions.extend(parse_exec_flag(v) for v in exec_flags)
    actions.extend(parse_signal_flag(v) for v in signal_flags)
    actions.extend(parse_reload_flag(v) for v in reload_flags)
    return tuple(actions)
