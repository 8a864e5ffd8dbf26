"""The access policy of a mount (`secretfs mount --policy FILE`): its TOML rules, and their decisions.

    hide_denied = true                  # optional (default false)
    [[rule]]
    secrets = ["db/*"]                  # fnmatch globs over full secret names; the FIRST matching rule wins
    owner = "postgres"                  # optional: what stat shows (a user name or a uid)
    group = "postgres"                  # optional: a group name or a gid
    mode = "0600"                       # optional: an octal string, or a TOML integer like 0o600
    [rule.readers]                      # optional: who may open; absent = the file modes alone decide
    uids = [0, "postgres"]              # the request's uid
    gids = ["ssl-cert"]                 # the request's gid or one of the process's supplementary groups
    exe = ["/usr/lib/postgresql/15/bin/postgres"]   # /proc/PID/exe of the caller's process
    exe_sha256 = ["<hex>"]              # with exe: the SHA-256 of the file the process runs
    units = ["postgresql@15-main.service"]          # the systemd unit of the caller's cgroup
    cgroups = ["/kubepods.slice/"]      # cgroup v2 path prefixes, whole components

Every field present in `readers` is a condition, and all of them must hold; within a field, any
listed value will do. Root is not exempt. A secret matched by no rule, or by a rule without
`readers`, is decided by the file modes alone. The file is checked like the actions file (owned by
the daemon's user, writable by nobody else); every problem is one ConfigError line.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import grp
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secretfs.actions_config import check_actions_file, numbered_tables, toml_document
from secretfs.callers import Identity
from secretfs.errors import ConfigError

TOP_KEYS = frozenset({"hide_denied", "rule"})
RULE_KEYS = frozenset({"secrets", "owner", "group", "mode", "readers"})
READER_KEYS = ("uids", "gids", "exe", "exe_sha256", "units", "cgroups")
SHA256 = re.compile(r"[0-9a-f]{64}")
RULE_CACHE_MAX = 65536  # secret names whose rule is remembered (the cache is emptied when full)

AttrOverride = tuple[int | None, int | None, int | None]  # (mode, uid, gid); None: as the mount options say


@dataclass(frozen=True)
class Readers:
    """Who may open the secrets of a rule: each non-None field is a condition, all must hold."""

    uids: frozenset[int] | None = None
    gids: frozenset[int] | None = None
    exe: frozenset[str] | None = None
    exe_sha256: frozenset[str] | None = None
    units: frozenset[str] | None = None
    cgroups: tuple[str, ...] | None = None
    needs_process: bool = field(init=False)  # whether a decision needs /proc (more than the request's uid)

    def __post_init__(self) -> None:
        needs = any(f is not None for f in (self.exe, self.exe_sha256, self.units, self.cgroups, self.gids))
        object.__setattr__(self, "needs_process", needs)

    def allows(self, who: Identity) -> bool:
        """Whether who passes every condition (a field /proc could not tell fails)."""
        if self.uids is not None and who.uid not in self.uids:
            return False
        if self.gids is not None and not self.gids & who.groups:
            return False
        if self.exe is not None and who.exe not in self.exe:
            return False
        if self.exe_sha256 is not None and who.exe_sha256() not in self.exe_sha256:
            return False
        if self.units is not None and who.unit not in self.units:
            return False
        return self.cgroups is None or (who.cgroup is not None and any(_below(who.cgroup, p) for p in self.cgroups))


def _below(path: str, prefix: str) -> bool:
    """Whether cgroup path is prefix or lies under it, by whole components."""
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/") or base == ""


@dataclass(frozen=True)
class Rule:
    """One [[rule]]: the secrets it covers, what stat shows for them, and who may open them."""

    secrets: tuple[str, ...]
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    readers: Readers | None = None

    def matches(self, secret: str) -> bool:
        return any(fnmatch.fnmatchcase(secret, glob) for glob in self.secrets)


@dataclass(frozen=True)
class Policy:
    """The rules of one policy file, in order."""

    rules: tuple[Rule, ...]
    hide_denied: bool = False
    source: str = ""
    _found: dict[str, Rule | None] = field(default_factory=dict, compare=False, repr=False)  # rule_for's answers

    def rule_for(self, secret: str) -> Rule | None:
        """The first rule matching secret."""
        try:
            return self._found[secret]
        except KeyError:
            pass
        found = next((rule for rule in self.rules if rule.matches(secret)), None)
        if len(self._found) >= RULE_CACHE_MAX:
            self._found.clear()
        self._found[secret] = found
        return found

    def readers_for(self, secret: str) -> Readers | None:
        """Who may open secret, or None when the file modes alone decide."""
        rule = self.rule_for(secret)
        return rule.readers if rule is not None else None

    @property
    def restricts(self) -> bool:
        """Whether any rule names readers (then every open must reach the daemon)."""
        return any(rule.readers is not None for rule in self.rules)

    def attr_override(self, secret: str) -> AttrOverride:
        """(mode, uid, gid) of secret's rule; None for what the mount options decide."""
        rule = self.rule_for(secret)
        return (None, None, None) if rule is None else (rule.mode, rule.uid, rule.gid)

    def chained(
        self, previous: Callable[[str], AttrOverride] | None, prefix: str = ""
    ) -> Callable[[str], AttrOverride]:
        """The view's attr_override: the policy's over another (per-secret modes kept in the store),
        for names relative to prefix (a subtree mount). The policy's fields win."""

        def override(secret: str) -> AttrOverride:
            mine = self.attr_override(prefix + secret)
            if previous is None:
                return mine
            theirs = previous(secret)
            return (
                mine[0] if mine[0] is not None else theirs[0],
                mine[1] if mine[1] is not None else theirs[1],
                mine[2] if mine[2] is not None else theirs[2],
            )

        return override


# ----- parsing ---------------------------------------------------------------------------------------


def _account_id(value: Any, key: str, kind: str, lookup: Callable[[str], int]) -> int:
    """A uid or gid (kind "user" or "group") from a name, resolved on this host, or a number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and value:
        try:
            return lookup(value)
        except KeyError:
            raise ValueError(f"{key}: no {kind} named {value!r} on this host") from None
    raise ValueError(f"{key}: {value!r} is not a {kind} name or {'uid' if kind == 'user' else 'gid'}")


def _user(value: Any, key: str) -> int:
    return _account_id(value, key, "user", lambda name: pwd.getpwnam(name).pw_uid)


def _group(value: Any, key: str) -> int:
    return _account_id(value, key, "group", lambda name: grp.getgrnam(name).gr_gid)


def _mode(value: Any) -> int:
    if isinstance(value, str) and value and all(c in "01234567" for c in value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ValueError(f'mode must be an octal string like "0600", not {value!r}')
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {value!r} has bits outside 07777")
    return mode


def _list(table: dict[str, Any], key: str) -> list[Any]:
    value = table[key]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list")
    return value


def _strings(table: dict[str, Any], key: str) -> list[str]:
    values = _list(table, key)
    if not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{key} must list non-empty strings")
    return values


def readers_from_table(table: Any) -> Readers:
    """A [rule.readers] table; ValueError saying what is wrong."""
    if not isinstance(table, dict):
        raise ValueError("readers must be a table ([rule.readers])")
    unknown = sorted(set(table) - set(READER_KEYS))
    if unknown:
        raise ValueError(f"readers: unknown key {unknown[0]!r} (allowed: {', '.join(READER_KEYS)})")
    if not table:
        raise ValueError("readers names no condition (remove it to let the file modes decide)")
    fields: dict[str, Any] = {}
    if "uids" in table:
        fields["uids"] = frozenset(_user(v, "readers.uids") for v in _list(table, "uids"))
    if "gids" in table:
        fields["gids"] = frozenset(_group(v, "readers.gids") for v in _list(table, "gids"))
    if "exe" in table:
        exes = _strings(table, "exe")
        if not all(e.startswith("/") for e in exes):
            raise ValueError("readers.exe must list absolute paths")
        fields["exe"] = frozenset(exes)
    if "exe_sha256" in table:
        if "exe" not in table:
            raise ValueError("readers.exe_sha256 goes with readers.exe")
        digests = [d.lower() for d in _strings(table, "exe_sha256")]
        if not all(SHA256.fullmatch(d) for d in digests):
            raise ValueError("readers.exe_sha256 must list SHA-256 digests (64 hex digits)")
        fields["exe_sha256"] = frozenset(digests)
    if "units" in table:
        units = _strings(table, "units")
        if not all(u.endswith((".service", ".scope")) and "/" not in u for u in units):
            raise ValueError('readers.units must list unit names like "nginx.service" (or a .scope)')
        fields["units"] = frozenset(units)
    if "cgroups" in table:
        prefixes = _strings(table, "cgroups")
        if not all(p.startswith("/") for p in prefixes):
            raise ValueError('readers.cgroups must list cgroup paths starting with "/"')
        fields["cgroups"] = tuple(prefixes)
    return Readers(**fields)


def rule_from_table(table: Any) -> Rule:
    """One [[rule]] table; ValueError saying what is wrong."""
    if not isinstance(table, dict):
        raise ValueError("is not a table (write [[rule]] with keys under it)")
    unknown = sorted(set(table) - RULE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(RULE_KEYS))})")
    if "secrets" not in table:
        raise ValueError('secrets is missing (a list of globs, like ["db/*"])')
    globs = tuple(_strings(table, "secrets"))
    if not any(key in table for key in ("owner", "group", "mode", "readers")):
        raise ValueError("the rule says nothing: give readers, owner, group or mode")
    return Rule(
        secrets=globs,
        mode=_mode(table["mode"]) if "mode" in table else None,
        uid=_user(table["owner"], "owner") if "owner" in table else None,
        gid=_group(table["group"], "group") if "group" in table else None,
        readers=readers_from_table(table["readers"]) if "readers" in table else None,
    )


def parse_policy(text: str, source: str) -> Policy:
    """The policy of a TOML document; ConfigError naming source, the rule's number and the problem."""
    document = toml_document(text, source)
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (allowed: hide_denied, [[rule]])")
    hide = document.get("hide_denied", False)
    if not isinstance(hide, bool):
        raise ConfigError(f"{source}: hide_denied must be true or false")
    rules = numbered_tables(document, "rule", source, rule_from_table)
    return Policy(rules, hide_denied=hide, source=source)


def load_policy_file(path: Path, *, allow_unsafe: bool = False) -> Policy:
    """The policy of a TOML file owned by this user and writable by nobody else."""
    check_actions_file(path, allow_unsafe=allow_unsafe, what="policy file", why="it decides who reads secrets")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the policy file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return dataclasses.replace(parse_policy(text, str(path)), source=str(path.absolute()))
