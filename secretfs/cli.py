"""The `secretfs` command line: mount, umount, status, ls, get, put, rm, migrate, rotate-key.

Values go in through stdin or --file, never argv. Errors print one line and exit with the
documented code of their class (secretfs.errors).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from secretfs import __version__, control, errors, mounts, render
from secretfs.config import (
    Settings,
    check_data_dir,
    create_key_file,
    load_settings,
    make_private_dir,
    read_key_file,
    redact_url,
    sqlite_path,
)
from secretfs.freshness import DEFAULTS, FreshnessPolicy
from secretfs.stores.base import FileAttrs, file_attr_store
from secretfs.view import ViewOptions

log = logging.getLogger("secretfs")

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="secretfs: %(levelname)s: %(message)s", stream=sys.stderr, force=True)
    # The FUSE binding logs call arguments at debug level; keep it quiet.
    logging.getLogger("mfusepy").setLevel(logging.WARNING)


class OctalMode(click.ParamType[int]):
    """An octal permission mode: bits within 07777 only (no file-type bits)."""

    name = "octal mode"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            mode = value
        else:
            try:
                mode = int(str(value), 8)
            except ValueError:
                self.fail(f"{value!r} is not an octal mode like 0600", param, ctx)
        if not 0 <= mode <= 0o7777:
            self.fail(f"{value!r} is not a permission mode: only the bits of 07777 are allowed", param, ctx)
        return mode


class Seconds(click.ParamType[float]):
    """A finite number of seconds, 0 or more (no inf, no nan)."""

    name = "seconds"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0 or (self.positive and seconds == 0):
            bound = "above 0" if self.positive else "0 or more"
            self.fail(f"{value!r} is not a finite number of seconds, {bound}", param, ctx)
        return seconds


def common_options(func: F) -> F:
    """The configuration flags every command takes; they override the environment."""

    @click.option(
        "--mode",
        "mode",
        default=None,
        help="DB, VAULT or READONLY_VAULT (overrides ARCHESTRA_SECRETS_MANAGER).",
    )
    @click.option("--database-url", default=None, help="SQLAlchemy URL (overrides ARCHESTRA_DATABASE_URL).")
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Data directory.")
    @click.option("--strict", is_flag=True, help="Refuse to fall back to DB when a Vault variable is missing.")
    @click.option(
        "--timeout",
        type=Seconds(positive=True),
        default=None,
        help="Backend request timeout in seconds (default 5).",
    )
    @click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
    @functools.wraps(func)
    def wrapper(
        mode: str | None,
        database_url: str | None,
        data_dir: Path | None,
        strict: bool,
        timeout: float | None,
        verbose: int,
        **kwargs: Any,
    ) -> Any:
        setup_logging(verbose)
        try:
            settings = load_settings(
                mode=mode,
                database_url=database_url,
                data_dir=data_dir,
                strict=strict,
                timeout=timeout,
            )
            if settings.fallback_reason:
                log.warning("falling back to DB mode: %s", settings.fallback_reason)
            if settings.mode == "DB":
                sqlite_path(settings.database_url)  # a URL that cannot be parsed is a configuration error
            check_data_dir(settings)
            return func(settings, **kwargs)
        except errors.SecretfsError as exc:
            click.echo(f"secretfs: error: {exc}", err=True)
            sys.exit(errors.exit_code_for(exc))

    return wrapper  # type: ignore[return-value]


def _database_holds_data(settings: Settings) -> bool:
    """Whether the configured database already holds a secret row or a key canary (reads only;
    an SQLite file that does not exist is not created)."""
    import sqlalchemy as sa

    from secretfs.stores.sql import backend_errors, make_engine, meta_table, secret_table
    from secretfs.stores.sql_setup import CANARY_KEY

    db_file = sqlite_path(settings.database_url)
    if db_file is not None and not db_file.exists():
        return False
    engine = make_engine(settings.database_url, timeout=settings.timeout)
    try:
        with backend_errors("opening the database"), engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if (
                meta_table.name in tables
                and conn.execute(sa.select(meta_table.c.key).where(meta_table.c.key == CANARY_KEY)).first()
            ):
                return True
            return (
                secret_table.name in tables and conn.execute(sa.select(secret_table.c.id).limit(1)).first() is not None
            )
    finally:
        engine.dispose()


def with_key(settings: Settings, *, generate: bool) -> Settings:
    """DB mode: the settings with the encryption secret resolved (configured, or the key file).

    A key is generated (generate=True) only for a database that holds no secrets and no key canary:
    for any other, a missing key is a configuration error and nothing is written. With
    generate=False (status, ls, get) nothing is ever written, and the secret may stay None for a
    database that is empty or does not exist yet. Commands that write also get their directories
    made 0700, whatever the umask.
    """
    if settings.mode != "DB":
        return settings
    if settings.encryption_secret is None:
        secret = read_key_file(settings)
        if secret is None:
            if _database_holds_data(settings):
                raise errors.ConfigError(
                    f"no encryption secret is configured and {settings.key_file} does not exist, but the "
                    f"database {redact_url(settings.database_url)} already holds secrets: set "
                    "ARCHESTRA_SECRETS_ENCRYPTION_SECRET to the secret it was written with (no key was generated)"
                )
            if not generate:
                return settings
            secret = create_key_file(settings)
        settings = replace(settings, encryption_secret=secret)
    if generate:
        db_file = sqlite_path(settings.database_url)
        if db_file is not None:
            make_private_dir(db_file.parent)
    return settings


def _nothing_stored(settings: Settings) -> bool:
    """A DB-mode database that does not exist yet, or has no key because it is empty: reading it
    must not create it (or a key)."""
    if settings.mode != "DB":
        return False
    db_file = sqlite_path(settings.database_url)
    return settings.encryption_secret is None or (db_file is not None and not db_file.exists())


def open_view(settings: Settings, *, read_only: bool = False) -> Any:
    from secretfs.stores import open_store
    from secretfs.view import View

    read_only = read_only or settings.read_only_mode
    settings = with_key(settings, generate=not read_only)
    return View(open_store(settings, read_only=read_only), ViewOptions(read_only=read_only))


def check_name(name: str) -> str:
    """A name from the command line: argv that is not UTF-8 is refused with one line."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidName(f"{ascii_name(name)} is not valid UTF-8; secret names are UTF-8 text") from None
    return name


def ascii_name(name: str) -> str:
    """A name as a quoted, escaped string (bytes that are not UTF-8 as \\xNN)."""
    raw = name.encode("utf-8", "surrogateescape")
    return json.dumps(raw.decode("utf-8", "backslashreplace"))


def display_name(name: str) -> str:
    """A name printed unambiguously on one line: as it is when it is plain printable text, else as a
    JSON string (names with a control character, a backslash or a leading double quote)."""
    if name.isprintable() and "\\" not in name and not name.startswith('"'):
        return name
    return json.dumps(name, ensure_ascii=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secretfs")
def main() -> None:
    """secretfs: secrets as files, decrypted or fetched at read time."""
    from secretfs import hardening

    hardening.protect_process()  # every command may hold a key or a value: no core file, no ptrace


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (systemd, containers).")
@click.option("--read-only", is_flag=True, help="Mount read-only: every mutating operation fails with EROFS.")
@click.option("--layout", type=click.Choice(["file", "keys"]), default="file", show_default=True)
@click.option("--allow-other", is_flag=True, help="Let other users (container processes) in.")
@click.option("--uid", type=int, default=-1, help="Owner of files (default: the mounting user).")
@click.option("--gid", type=int, default=-1, help="Group of files (default: the mounting group).")
@click.option(
    "--file-mode",
    type=OctalMode(),
    default=None,
    help="Octal file mode (default 0600, or 0400 read-only).",
)
@click.option("--dir-mode", type=OctalMode(), default=None, help="Octal directory mode (default 0700, or 0500).")
@click.option(
    "--cache-mode",
    type=click.Choice(["kernel", "direct"]),
    default=DEFAULTS.cache_mode,
    show_default=True,
    help="kernel: contents served from the page cache (one inode per value); direct: every read reaches the daemon.",
)
@click.option(
    "--cache-ttl",
    type=Seconds(),
    default=DEFAULTS.ttl,
    show_default=True,
    help="Freshness bound: no path leads to a value older than this many seconds (0: every open reads the store).",
)
@click.option(
    "--max-stale",
    type=Seconds(),
    default=DEFAULTS.max_stale,
    show_default=True,
    help="While the backend is down, serve a value read within this many seconds; then EIO.",
)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Daemon log (background mounts).",
)
@click.option(
    "--actions",
    "actions_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the on-change actions of this TOML file (root-owned, not writable by others; docs/systemd.md).",
)
@click.option(
    "--on-change-exec",
    multiple=True,
    metavar="'GLOB=COMMAND ARGS'",
    help="When a secret matching GLOB changes, run COMMAND (split like a shell would, run without one).",
)
@click.option(
    "--on-change-signal",
    multiple=True,
    metavar="'GLOB=PIDFILE[:SIGNAL]'",
    help="When a secret matching GLOB changes, signal the process in PIDFILE (default SIGHUP).",
)
@click.option(
    "--on-change-reload",
    multiple=True,
    metavar="'GLOB=UNIT'",
    help="When a secret matching GLOB changes, run `systemctl reload UNIT`.",
)
@click.option(
    "--prefix",
    default="",
    metavar="PREFIX",
    help="Show only the secrets under PREFIX (tls/ shows tls/a as a): names outside it are unreachable.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Who may read which secret, and per-secret owners and modes: a TOML file (root-owned, not writable "
    "by others; README, Policy).",
)
@click.option(
    "--audit-log",
    multiple=True,
    metavar="FILE|-",
    help="Append one JSON line per open, write, unlink, rename and chmod of a secret to FILE (0600), or to "
    "stderr with '-'. May be given twice.",
)
@click.option(
    "--audit-log-max-size",
    type=click.IntRange(min=0),
    default=0,
    metavar="BYTES",
    help="Rename an audit log file about to grow past BYTES to FILE.1 and start again (0: no limit).",
)
@click.option("--debug", is_flag=True, help="libfuse debug output (implies --foreground).")
@common_options
def mount(settings: Settings, mountpoint: Path, foreground: bool, log_file: Path | None, **kw: Any) -> None:
    """Mount the secrets at MOUNTPOINT; returns once the mount is live unless -f."""
    from secretfs import background, daemon
    from secretfs.actions_config import actions_from_options
    from secretfs.audit import check_destinations
    from secretfs.policy import load_policy_file
    from secretfs.stores.prefixed import normalize_prefix

    prefix = normalize_prefix(kw["prefix"])
    actions = actions_from_options(
        actions_file=kw["actions_file"],
        exec_flags=kw["on_change_exec"],
        signal_flags=kw["on_change_signal"],
        reload_flags=kw["on_change_reload"],
        allow_unsafe=settings.allow_unsafe_data_dir,
    )
    policy = None
    if kw["policy_file"] is not None:
        policy = load_policy_file(kw["policy_file"], allow_unsafe=settings.allow_unsafe_data_dir)
    check_destinations(kw["audit_log"])
    if (kw["uid"] >= 0 or kw["gid"] >= 0) and not kw["allow_other"]:
        log.warning(
            "--uid/--gid without --allow-other: only the mounting user can enter the mount, "
            "whoever the files say owns them"
        )
    settings = with_key(settings, generate=True)

    options = daemon.MountOptions(
        mountpoint=mountpoint,
        view=ViewOptions(
            layout=kw["layout"],
            read_only=kw["read_only"],
            uid=kw["uid"],
            gid=kw["gid"],
            file_mode=kw["file_mode"],
            dir_mode=kw["dir_mode"],
        ),
        allow_other=kw["allow_other"],
        freshness=FreshnessPolicy(cache_mode=kw["cache_mode"], ttl=kw["cache_ttl"], max_stale=kw["max_stale"]),
        debug=kw["debug"],
        actions=actions,
        prefix=prefix,
        policy=policy,
        audit_log=tuple(kw["audit_log"]),
        audit_log_max_size=kw["audit_log_max_size"],
    )
    if foreground or kw["debug"]:
        sys.exit(daemon.run_foreground(settings, options))
    daemon.check_mountpoint(mountpoint.absolute())
    log_path = log_file or settings.data_dir / "secretfs.log"
    make_private_dir(log_path.parent)
    sys.exit(background.start_background(sys.argv[1:], mountpoint, log_path))


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now even if busy (umount -l).")
def umount(mountpoint: Path, lazy: bool) -> None:
    """Unmount a secretfs mount."""
    if mounts.find_mount(mountpoint) is None:
        click.echo(f"secretfs: error: no secretfs mount at {mountpoint}", err=True)
        sys.exit(errors.EXIT_NOT_FOUND)
    result = mounts.unmount(mountpoint, lazy=lazy)
    if result.returncode != 0:
        reason = _unmount_reason(result.stderr)
        click.echo(
            f"secretfs: error: could not unmount {mountpoint}: {reason} (close files under it, or use --lazy)",
            err=True,
        )
        sys.exit(errors.EXIT_ERROR)


def _unmount_reason(stderr: str) -> str:
    """fusermount3's reason, without its prefix ("Device or resource busy"), or a probe's."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1].rpartition(": ")[2] or lines[-1]
    return "fusermount3 gave no reason"


def _status(settings: Settings, mountpoint: Path | None) -> tuple[dict[str, Any], int]:
    from secretfs.stores import open_store

    report: dict[str, Any] = {
        "version": __version__,
        "mode_requested": settings.mode_requested,
        "mode": settings.mode,
        "fallback_reason": settings.fallback_reason,
        "data_dir": str(settings.data_dir),
    }
    if settings.mode == "DB":
        report["database"] = redact_url(settings.database_url)
        report["encryption_secret_source"] = settings.encryption_secret_source
    code = errors.EXIT_OK
    store = None
    try:
        # status writes nothing: no key, no database file, no table.
        settings = with_key(settings, generate=False)
        if _nothing_stored(settings):
            report["backend"] = {"healthy": True, "secrets": 0, "note": "nothing stored yet"}
        else:
            store = open_store(settings, read_only=True)
    except errors.SecretfsError as exc:
        report["backend"] = {"healthy": False, "error": str(exc)}
        code = errors.exit_code_for(exc)
    if store is not None:
        try:
            from secretfs.view import View

            info = store.info()
            info["hidden_invalid_names"] = View(store, ViewOptions(read_only=True)).hidden_names()
            report["backend"] = {"healthy": True, **info}
        except errors.SecretfsError as exc:
            report["backend"] = {"healthy": False, "error": str(exc)}
            code = errors.exit_code_for(exc)
        finally:
            store.close()
    # Other mounts are listed from the mount table only: probing them could block on a daemon
    # that does not answer. The mount asked about is probed, within the timeout.
    report["mounts"] = [{"mountpoint": m.mountpoint, "options": m.options} for m in mounts.secretfs_mounts()]
    if mountpoint is not None:
        absolute = mountpoint.absolute()
        probed = mounts.run_bounded(lambda: _probe_mount(absolute), settings.timeout)
        report["mount"] = probed or {"mountpoint": str(absolute), "live": False, "state": "unresponsive"}
        if not report["mount"]["live"]:
            code = code or errors.EXIT_BACKEND
    return report, code


def _probe_mount(mountpoint: Path) -> dict[str, Any]:
    """The state of one mount and, when it answers, its daemon's own report."""
    state = mounts.mount_state(mountpoint)
    report: dict[str, Any] = {"mountpoint": str(mountpoint), "live": state == "live", "state": state}
    if state == "live":
        report["daemon"] = _daemon_status(mountpoint)
    return report


def _daemon_status(mountpoint: Path) -> dict[str, Any]:
    """The running daemon's own report (hardening, pid), from the user.secretfs.status xattr of its root."""

    try:
        return dict(json.loads(os.getxattr(mountpoint, mounts.STATUS_XATTR)))
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read {mounts.STATUS_XATTR}: {getattr(exc, 'strerror', None) or exc}"}


def _print_report(report: dict[str, Any], indent: str = "") -> None:
    for key, value in report.items():
        if isinstance(value, dict):
            click.echo(f"{indent}{key}:")
            _print_report(value, indent + "  ")
        elif isinstance(value, list):
            click.echo(f"{indent}{key}: {len(value)}")
            for item in value:
                click.echo(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        elif value is not None:
            click.echo(f"{indent}{key}: {value}")


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
def status(settings: Settings, mountpoint: Path | None, as_json: bool) -> None:
    """Show the mode asked for and in force, the backend's health, and the mounts."""
    report, code = _status(settings, mountpoint)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_report(report)
    sys.exit(code)


@main.command(name="ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
def list_secrets(settings: Settings, prefix: str, as_json: bool) -> None:
    """List secret names (optionally those starting with PREFIX).

    A name that is not plain printable text (a newline, a control character, a backslash, a leading
    double quote) is printed as a JSON string; --json gives every name exactly.
    """
    check_name(prefix)
    settings = with_key(settings, generate=False)
    metas = []
    if not _nothing_stored(settings):
        view = open_view(settings, read_only=True)
        try:
            metas = [m for m in view.store.list(prefix) if render.is_valid_name(m.name)]
        finally:
            view.store.close()
    if as_json:
        click.echo(json.dumps([{"name": m.name, "updated_at": m.updated_at} for m in metas], indent=2))
    else:
        for meta in metas:
            click.echo(display_name(meta.name))


@main.command()
@click.argument("name")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the stored JSON value instead of the file content.",
)
@common_options
def get(settings: Settings, name: str, as_json: bool) -> None:
    """Print a secret as its file shows it (or its JSON value with --json)."""
    check_name(name)
    settings = with_key(settings, generate=False)
    if _nothing_stored(settings):
        raise errors.NotFound(f"no secret named {display_name(name)}")
    view = open_view(settings, read_only=True)
    try:
        record = view.store.read(name)
    finally:
        view.store.close()
    out = sys.stdout.buffer
    out.write(render.canonical_json(record.value) if as_json else render.render(record.value))
    out.flush()


def _tell_mounts(settings: Settings, names: list[str]) -> None:
    """Read-your-writes: every live mount of this store on this host serves the change on return."""
    for warning in control.tell_mounts(control.store_id(settings), names):
        click.echo(f"secretfs: warning: {warning}", err=True)


def _put_items(items: tuple[str, ...], source: Any, from_dir: Path | None) -> dict[str, bytes]:
    """The names and contents a `put` stores, from its arguments (see `put`)."""
    if from_dir is not None:
        if len(items) > 1 or source is not None:
            raise click.UsageError("--from-dir takes at most one PREFIX and no --file")
        prefix = items[0].strip("/") if items else ""
        found = {}
        for path in sorted(p for p in from_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(from_dir).as_posix()
            found[f"{prefix}/{relative}" if prefix else relative] = path.read_bytes()
        if not found:
            raise click.UsageError(f"{from_dir} holds no files")
        return found
    if not items:
        raise click.UsageError("give NAME (value from stdin or --file), NAME=FILE pairs, or --from-dir DIR")
    if source is not None or (len(items) == 1 and "=" not in items[0]):
        if len(items) != 1:
            raise click.UsageError("--file stores one NAME")
        return {items[0]: source.read() if source is not None else sys.stdin.buffer.read()}
    pairs = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise click.UsageError(f"{item!r} is not NAME=FILE (a name containing '=' is stored with --file)")
        try:
            pairs[name] = Path(file).read_bytes()
        except OSError as exc:
            raise click.UsageError(f"cannot read {file}: {exc.strerror}") from None
    return pairs


@main.command()
@click.argument("items", nargs=-1, metavar="NAME | NAME=FILE... | [PREFIX]")
@click.option("--file", "source", type=click.File("rb"), default=None, help="Read the one NAME's value from this file.")
@click.option(
    "--from-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Store every file under DIR as PREFIX/its/relative/path.",
)
@click.option(
    "--file-mode",
    type=OctalMode(),
    default=None,
    help="The files' mode (permission bits within 0777), stored with each secret.",
)
@click.option("--owner", default=None, help="The files' owner (a user name, or a uid), stored with each secret.")
@click.option("--group", default=None, help="The files' group (a group name, or a gid), stored with each secret.")
@common_options
def put(
    settings: Settings,
    items: tuple[str, ...],
    source: Any,
    from_dir: Path | None,
    file_mode: int | None,
    owner: str | None,
    group: str | None,
) -> None:
    """Store secrets, each exactly as a file write would store it.

    `put NAME` reads the value from stdin (or --file); `put NAME=FILE...` and `put --from-dir DIR
    [PREFIX]` store several at once, in one transaction in DB mode (all or none). When put returns,
    every mount of the store on this host serves all the new values. `--file-mode`, `--owner` and
    `--group` set the mode and owner of every secret stored, with its value.
    """
    attrs = _put_attrs(file_mode, owner, group)
    contents = _put_items(items, source, from_dir)
    values = {}
    for name, content in contents.items():
        check_name(name)
        render.check_new_name(name)
        try:
            values[name] = render.stored_value(content)
        except errors.ValueTooLarge as exc:
            raise errors.ValueTooLarge(f"{name!r}: {exc}") from None
    view = open_view(settings)
    try:
        if view.options.read_only:
            raise errors.ReadOnly(f"{settings.mode} mode is read-only: secretfs does not write secrets")
        if attrs.empty:
            view.store.write_many(values)
        else:
            keeper = file_attr_store(view.store)
            if keeper is None:
                raise errors.NotPermitted(
                    "this store keeps no per-secret modes or owners (KV v1 keeps no per-secret modes; "
                    "use a policy file)"
                )
            keeper.write_with_attrs(values, attrs)
    finally:
        view.store.close()
    _tell_mounts(settings, list(contents))


def _put_attrs(file_mode: int | None, owner: str | None, group: str | None) -> FileAttrs:
    """The file attrs `put` stores: a mode within 0777, owner and group names (ids as decimal text)."""
    if file_mode is not None and file_mode & ~0o777:
        raise click.UsageError("--file-mode takes permission bits only (within 0777): no setuid, setgid or sticky")
    for flag, name in (("--owner", owner), ("--group", group)):
        if name is not None and (not name or ":" in name or "/" in name or not name.isprintable()):
            raise click.UsageError(f"{flag} takes a user or group name, or a number")
    return FileAttrs(file_mode, owner, group)


@main.command()
@click.argument("name")
@common_options
def rm(settings: Settings, name: str) -> None:
    """Delete a secret."""
    check_name(name)
    view = open_view(settings)
    try:
        if view.options.read_only:
            raise errors.ReadOnly(f"{settings.mode} mode is read-only: secretfs does not delete secrets")
        view.store.delete(name)
    finally:
        view.store.close()
    _tell_mounts(settings, [name])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
def migrate(settings: Settings, as_json: bool) -> None:
    """Encrypt every plaintext row of the database (also done at every startup)."""
    from secretfs import crypto
    from secretfs.stores.sql_setup import open_engine, prepare_database, resolve_secret

    if settings.mode != "DB":
        raise errors.ConfigError("migrate works on the DB store; the mode in force is " + settings.mode)
    settings = with_key(settings, generate=True)
    engine = open_engine(settings)
    try:
        count = prepare_database(engine, crypto.derive_key(resolve_secret(settings)))
    finally:
        engine.dispose()
    if count:
        _tell_mounts(settings, [control.ALL])
    if as_json:
        click.echo(json.dumps({"encrypted_rows": count}))
    else:
        click.echo(f"encrypted {count} plaintext row(s)" if count else "no plaintext rows; nothing to do")


@main.command(name="pg-trigger")
@click.argument("action", type=click.Choice(["install", "remove", "status"]))
@common_options
def pg_trigger(settings: Settings, action: str) -> None:
    """Install (or remove) the trigger that makes every write to the `secret` table notify mounts.

    secretfs's own writes always notify; with the trigger, writes by other programs (Archestra,
    plain SQL) reach every mount on every host within a fraction of a second too. PostgreSQL only;
    never installed unless asked.
    """
    from secretfs.stores import pg_notify
    from secretfs.stores.sql import backend_errors
    from secretfs.stores.sql_setup import open_engine

    if settings.mode != "DB":
        raise errors.ConfigError("pg-trigger works on the DB store; the mode in force is " + settings.mode)
    engine = open_engine(settings)
    try:
        if engine.dialect.name != "postgresql":
            raise errors.ConfigError("pg-trigger needs PostgreSQL (SQLite changes are seen through its file)")
        with backend_errors(f"changing the notify trigger ({action})"):
            if action == "install":
                pg_notify.install_trigger(engine)
            elif action == "remove":
                pg_notify.remove_trigger(engine)
            installed = pg_notify.trigger_installed(engine)
    finally:
        engine.dispose()
    click.echo(f"notify trigger: {'installed' if installed else 'not installed'}")


@main.command(name="rotate-key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (counts).")
@common_options
def rotate_key(settings: Settings, as_json: bool) -> None:
    """Re-encrypt every row from ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS to the current secret.

    One transaction; rows already under the current secret are left alone, so a second run changes
    nothing. The key canary is refreshed afterwards.
    """
    from secretfs import crypto, rotation
    from secretfs.stores.sql_setup import open_engine, resolve_secret

    if settings.mode != "DB":
        raise errors.ConfigError("rotate-key works on the DB store; the mode in force is " + settings.mode)
    settings = with_key(settings, generate=True)
    current = crypto.derive_key(resolve_secret(settings))
    previous = crypto.derive_key(settings.previous_secret) if settings.previous_secret else None
    if previous is None:
        log.warning("ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS is not set: only checking that every row is current")
    interactive = sys.stderr.isatty() and not as_json

    def progress(total: int) -> Any:
        return click.progressbar(length=total, label="re-encrypting", file=sys.stderr)

    engine = rotation.prepare_engine(open_engine(settings))
    try:
        result = rotation.rotate_key(engine, current, previous, progress=progress if interactive else None)
    finally:
        engine.dispose()
    if result.changed:
        _tell_mounts(settings, [control.ALL])
    if as_json:
        click.echo(json.dumps(result.as_dict(), sort_keys=True))
    elif not result.changed:
        click.echo(f"all {result.rows} row(s) are already under the current key; nothing changed")
    else:
        click.echo(
            f"re-encrypted {result.reencrypted} row(s) from the previous key; "
            f"{result.already_current} already current; {result.plaintext_encrypted} plaintext row(s) encrypted; "
            f"key canary {'refreshed' if result.canary_refreshed else 'already current'}"
        )


from secretfs.watch import WatchCommand  # the command's `--` split (CMD ARGS)


@main.command(cls=WatchCommand)
@click.argument("patterns", nargs=-1, required=True, metavar="NAME|GLOB... [-- CMD ARGS...]")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per name: name, change, time.")
@click.option(
    "--wait-timeout",
    type=Seconds(positive=True),
    default=None,
    help=f"Without CMD: give up after this many seconds with no change (exit {errors.EXIT_TIMEOUT}).",
)
@click.option(
    "--interval",
    type=Seconds(),
    default=DEFAULTS.ttl,
    show_default=True,
    help="Also poll the store every this many seconds (0: only news from the store and this host's writers).",
)
@common_options
def watch(
    settings: Settings, patterns: tuple[str, ...], as_json: bool, wait_timeout: float | None, interval: float
) -> None:
    """Wait until a secret matching NAME or GLOB changes (added, changed, removed): print the names of
    that change, one per line, and exit 0. With `-- CMD ARGS`, run CMD (no shell) once per change,
    one run at a time, until stopped; it gets SECRETFS_CHANGED (the names, one per line) and
    SECRETFS_CHANGE_KINDS (JSON, name to kind), never a value, and none of the ARCHESTRA_*,
    *ENCRYPTION_KEY* or *VAULT_TOKEN* variables. Only changes after the start count; the same value
    put again is no change. GLOB is fnmatch-style over the full name: `*` also matches `/`.

    \b
    Exit codes: 0 a change was printed, or stopped by SIGINT/SIGTERM;
    8 --wait-timeout passed with no change; 2 usage; 3 configuration;
    4 backend unavailable at the start; 5 key mismatch. See docs/watch.md.
    """
    from secretfs import watch as watching

    command = watching.command_of(click.get_current_context())
    if command:
        if wait_timeout is not None:
            raise click.UsageError("--wait-timeout applies only without CMD")
        watching.check_command(command)
    for pattern in patterns:
        check_name(pattern)
        if not pattern:
            raise click.UsageError("an empty NAME matches nothing")
        if not watching.is_glob(pattern):
            render.check_new_name(pattern)
    options = watching.WatchOptions(patterns, as_json, wait_timeout, interval, command)
    sys.exit(watching.run(with_key(settings, generate=False), options))
