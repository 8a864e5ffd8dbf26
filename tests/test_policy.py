"""The policy file (`mount --policy`): who may open which secret, hidden names, per-secret owners and modes.

Real mounts and real processes: other uids (setpriv), two copies of cat, a process in a cgroup of
its own. Root is not exempt from a rule that names readers.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs import mounts
from secretfs.callers import Identities, Identity, unit_of
from secretfs.errors import ConfigError
from secretfs.fusebind import Caller
from secretfs.policy import parse_policy
from tests.support.access import (
    NOBODY,
    OPEN_MODES,
    OTHER,
    as_uid,
    cgroup,
    copy_exe,
    denied,
    in_cgroup,
    reads,
    run,
    sha256,
    shared_dir,
    write_policy,
)
from tests.support.mount import Instance, mounted
from tests.support.wait import wait_until

CAT = Path("/usr/bin/cat")
NOBODY_READS_DB = f'[[rule]]\nsecrets = ["db/*"]\n[rule.readers]\nuids = [{NOBODY}]\n'


def put(instance: Instance, **values: str) -> None:
    for name, value in values.items():
        instance.cli("put", name.replace("__", "/"), input=value.encode())


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


# ----- the rules, without a mount ------------------------------------------------------------------


def who(uid: int = 0, *, exe: str | None = None, cgroup: str | None = None, groups: tuple[int, ...] = ()) -> Identity:
    return Identity(uid, uid, 1, 1, 1, frozenset({uid, *groups}), exe, cgroup)


def test_all_present_fields_must_hold_any_value_within_a_field() -> None:
    policy = parse_policy(
        """
        [[rule]]
        secrets = ["db/*"]
        [rule.readers]
        uids = [0, 101]
        exe = ["/usr/bin/a", "/usr/bin/b"]
        units = ["pg.service"]
        """,
        "p.toml",
    )
    readers = policy.readers_for("db/key")
    assert readers is not None
    pg = "/system.slice/pg.service"
    assert readers.allows(who(101, exe="/usr/bin/b", cgroup=pg))
    assert not readers.allows(who(102, exe="/usr/bin/b", cgroup=pg))  # uid fails
    assert not readers.allows(who(0, exe="/usr/bin/c", cgroup=pg))  # exe fails
    assert not readers.allows(who(0, exe="/usr/bin/a", cgroup="/system.slice/other.service"))  # unit fails
    assert not readers.allows(who(0, exe="/usr/bin/a"))  # no cgroup known: denied
    assert policy.readers_for("tls/key") is None  # no rule: the file modes decide


def test_first_matching_rule_wins_and_cgroup_prefixes_are_whole_components() -> None:
    policy = parse_policy(
        """
        [[rule]]
        secrets = ["db/open"]
        mode = "0644"
        [[rule]]
        secrets = ["db/*"]
        [rule.readers]
        cgroups = ["/kubepods.slice/"]
        gids = [33]
        """,
        "p.toml",
    )
    assert policy.readers_for("db/open") is None  # the first rule has no readers: modes decide
    assert policy.attr_override("db/open") == (0o644, None, None)
    readers = policy.readers_for("db/x")
    assert readers is not None
    assert readers.allows(who(5, cgroup="/kubepods.slice/pod1/c1", groups=(33,)))
    assert not readers.allows(who(5, cgroup="/kubepods.slice-other/c1", groups=(33,)))
    assert not readers.allows(who(5, cgroup="/kubepods.slice/pod1", groups=(34,)))
    assert unit_of("/user.slice/user@0.service/app.slice/run-1.scope") == "run-1.scope"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[rule]]\nsecrets = ['a']\n[rule.readers]\n", "readers names no condition"),
        ("[[rule]]\nsecrets = ['a']\n[rule.readers]\nuids = ['no-such-user-here']\n", "no user named"),
        ("[[rule]]\nsecrets = ['a']\n[rule.readers]\nexe_sha256 = ['00']\n", "goes with readers.exe"),
        ("[[rule]]\nsecrets = ['a']\nmode = '0999'\n", "octal"),
        ("[[rule]]\nsecrets = ['a']\n", "says nothing"),
        ("[[rule]]\nsecrets = ['a']\nowners = 'x'\n", "unknown key 'owners'"),
        ("hide_denied = 1\n[[rule]]\nsecrets = ['a']\nmode = '0600'\n", "hide_denied must be"),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_bad_policies_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "p.toml")
    assert problem in str(caught.value) and "\n" not in str(caught.value)


# ----- real mounts ---------------------------------------------------------------------------------


def test_uid_rule_allows_one_uid_and_denies_others_root_included(
    instance: Instance, tmp_path: Path, shared: Path
) -> None:
    put(instance, db__key="db-value", tls__key="tls-value")
    policy = write_policy(tmp_path / "policy.toml", NOBODY_READS_DB)
    with mounted(instance, shared / "m", *OPEN_MODES, "--policy", str(policy)) as m:
        key = str(m.path / "db" / "key")
        assert reads(as_uid(NOBODY, "cat", key)) == "db-value"
        assert denied(run(as_uid(OTHER, "cat", key)))
        assert denied(run(["cat", key]))  # root is not exempt
        # A secret no rule covers: the modes alone decide.
        assert run(as_uid(OTHER, "cat", str(m.path / "tls" / "key"))).stdout == "tls-value"


def test_exe_rule_tells_two_copies_of_cat_apart(instance: Instance, tmp_path: Path) -> None:
    a, b = copy_exe(CAT, tmp_path / "a" / "cat"), copy_exe(CAT, tmp_path / "b" / "cat")
    put(instance, db__key="db-value")
    policy = write_policy(tmp_path / "policy.toml", f'[[rule]]\nsecrets = ["db/key"]\n[rule.readers]\nexe = ["{a}"]\n')
    with mounted(instance, tmp_path / "m", "--policy", str(policy)) as m:
        key = str(m.path / "db" / "key")
        assert reads([str(a), key]) == "db-value"
        assert denied(run([str(b), key]))
        assert denied(run([str(CAT), key]))


def test_exe_sha256_denies_a_modified_copy(instance: Instance, tmp_path: Path) -> None:
    a, b = copy_exe(CAT, tmp_path / "a" / "cat"), copy_exe(CAT, tmp_path / "b" / "cat")
    with open(b, "ab") as handle:
        handle.write(b"\0modified")  # still runs: bytes past the ELF's segments
    put(instance, db__key="db-value")
    policy = write_policy(
        tmp_path / "policy.toml",
        f'[[rule]]\nsecrets = ["db/key"]\n[rule.readers]\nexe = ["{a}", "{b}"]\nexe_sha256 = ["{sha256(CAT)}"]\n',
    )
    with mounted(instance, tmp_path / "m", "--policy", str(policy)) as m:
        key = str(m.path / "db" / "key")
        assert run([str(b), "/dev/null"]).returncode == 0  # the modified copy works as cat
        assert reads([str(a), key]) == "db-value"
        assert denied(run([str(b), key]))


def test_cgroup_and_unit_rules(instance: Instance, tmp_path: Path) -> None:
    put(instance, db__key="db-value", app__key="app-value")
    with cgroup("app-test.service") as (directory, path):
        top = path.rpartition("/")[0]
        policy = write_policy(
            tmp_path / "policy.toml",
            f'[[rule]]\nsecrets = ["db/*"]\n[rule.readers]\ncgroups = ["{top}/"]\n'
            '[[rule]]\nsecrets = ["app/*"]\n[rule.readers]\nunits = ["app-test.service"]\n',
        )
        with mounted(instance, tmp_path / "m", "--policy", str(policy)) as m:
            db, app = str(m.path / "db" / "key"), str(m.path / "app" / "key")
            assert reads(in_cgroup(directory, "cat", db)) == "db-value"
            assert reads(in_cgroup(directory, "cat", app)) == "app-value"
            assert denied(run(["cat", db]))
            assert denied(run(["cat", app]))


def test_hide_denied_omits_names_from_listings_and_lookups(instance: Instance, tmp_path: Path, shared: Path) -> None:
    put(instance, db__key="db-value", db__other="x", tls__key="tls-value")
    policy = write_policy(
        tmp_path / "policy.toml",
        f'hide_denied = true\n[[rule]]\nsecrets = ["db/key"]\n[rule.readers]\nuids = [{NOBODY}]\n',
    )
    with mounted(instance, shared / "m", *OPEN_MODES, "--policy", str(policy)) as m:
        db = str(m.path / "db")
        assert reads(as_uid(NOBODY, "ls", db)).split() == ["key", "other"]
        assert reads(as_uid(OTHER, "ls", db)).split() == ["other"]
        assert reads(as_uid(NOBODY, "cat", f"{db}/key")) == "db-value"
        # Right after the allowed lookup, the denied caller still finds nothing.
        result = run(as_uid(OTHER, "stat", f"{db}/key"))
        assert result.returncode != 0 and "No such file or directory" in result.stderr
        assert run(as_uid(OTHER, "cat", str(m.path / "tls" / "key"))).stdout == "tls-value"


def test_owner_and_mode_override_what_stat_shows(instance: Instance, tmp_path: Path) -> None:
    put(instance, db__key="db-value", tls__key="tls-value")
    postgres = pwd.getpwnam("postgres")
    policy = write_policy(
        tmp_path / "policy.toml", '[[rule]]\nsecrets = ["db/key"]\nowner = "postgres"\ngroup = "0"\nmode = "0600"\n'
    )
    with mounted(instance, tmp_path / "m", "--file-mode", "0640", "--policy", str(policy)) as m:
        st = os.stat(m.path / "db" / "key")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, postgres.pw_uid, 0)
        other = os.stat(m.path / "tls" / "key")
        assert (stat.S_IMODE(other.st_mode), other.st_uid) == (0o640, os.getuid())
        assert stat.S_ISREG(st.st_mode)


@pytest.mark.parametrize("mode", [("--cache-mode", "kernel"), ("--read-only",)], ids=["kernel", "read-only-kernel"])
def test_kernel_modes_check_every_open(instance: Instance, tmp_path: Path, shared: Path, mode: tuple[str, ...]) -> None:
    put(instance, db__key="db-value")
    policy = write_policy(tmp_path / "policy.toml", NOBODY_READS_DB)
    with mounted(instance, shared / "m", *OPEN_MODES, *mode, "--policy", str(policy)) as m:
        key = str(m.path / "db" / "key")
        for _ in range(2):  # the second read is warm: served from the page cache, opened all the same
            assert reads(as_uid(NOBODY, "cat", key)) == "db-value"
        assert denied(run(as_uid(OTHER, "cat", key)))


@pytest.mark.parametrize(
    ("text", "chmod", "expected"),
    [
        ("[[rule]]\nsecrets = ['a']\nmode = 'rw'\n", 0o600, "rule 1: mode must be an octal string"),
        ("[[rule]]\nsecrets = ['a']\nmode = '0600'\n", 0o666, "writable by group or others"),
    ],
    ids=["bad-mode", "group-writable"],
)
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "background"])
def test_bad_policy_file_mounts_nothing(
    instance: Instance, tmp_path: Path, text: str, chmod: int, expected: str, foreground: bool
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    policy.chmod(chmod)
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    args = ["mount", *(["-f"] if foreground else []), str(mountpoint), "--policy", str(policy)]
    result = instance.cli(*args, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert expected in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert mounts.find_mount(mountpoint) is None


def test_identity_of_an_exited_process_has_no_process_fields() -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its id names no process now
    identity = Identities().of(Caller(0, 0, child.pid))
    assert (identity.pid, identity.exe, identity.cgroup) == (None, None, None)
    readers = parse_policy('[[rule]]\nsecrets = ["a"]\n[rule.readers]\nexe = ["/usr/bin/true"]\n', "p").readers_for("a")
    assert readers is not None and not readers.allows(identity)


def test_cached_identity_sees_an_exec() -> None:
    child = subprocess.Popen(["sh", "-c", "read line; exec sleep 30"], stdin=subprocess.PIPE)
    try:
        identities = Identities()
        before = identities.of(Caller(0, 0, child.pid))
        assert before.exe is not None and not before.exe.endswith("sleep")
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        wait_until(lambda: os.readlink(f"/proc/{child.pid}/exe").endswith("sleep"), 10)
        after = identities.of(Caller(0, 0, child.pid))  # within the cache's second
        assert after.exe is not None and after.exe.endswith("/sleep")
    finally:
        child.kill()
        child.wait()
