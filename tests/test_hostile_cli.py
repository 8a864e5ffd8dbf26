"""Issue 10, finding 15: every command, hostile arguments and environment: one error line, no
traceback, the documented exit code; options validated; names printed unambiguously."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import SECRETFS, make_instance, mounted

BAD_URL = "postgresql+psycopg://u@127.0.0.1:notaport/db"

# (arguments, extra environment, exit code); "{d}" is a scratch directory.
CASES: list[tuple[list[str], dict[str, str], int]] = [
    (["get", "\udcff"], {}, 2),
    (["rm", "\udcff"], {}, 2),
    (["put", "\udcff"], {}, 2),
    (["ls", "\udcff"], {}, 2),
    (["get", "missing"], {}, 6),
    (["rm", "missing"], {}, 6),
    (["put", "a/../b"], {}, 2),
    (["put", "a=/nonexistent/file"], {}, 2),
    (["put", "--file", "/nonexistent/file", "a"], {}, 2),
    (["put", "--from-dir", "/nonexistent/dir"], {}, 2),
    *[
        ([command, *rest], {"ARCHESTRA_DATABASE_URL": url}, 3)
        for url in (BAD_URL, "not a url", "nosuchdialect://x")
        for command, *rest in (["get", "a"], ["ls"], ["put", "a"], ["rm", "a"], ["migrate"], ["rotate-key"])
    ],
    (["status"], {"ARCHESTRA_DATABASE_URL": BAD_URL}, 3),
    (["ls"], {"ARCHESTRA_SECRETS_MANAGER": "bogus"}, 3),
    (["ls"], {"SECRETFS_TIMEOUT": "soon"}, 3),
    (["ls"], {"SECRETFS_TIMEOUT": "nan"}, 3),
    (["ls"], {"SECRETFS_TIMEOUT": "inf"}, 3),
    (["ls", "--timeout", "nan"], {}, 2),
    (["ls", "--timeout", "0"], {}, 2),
    (["umount", "{d}/not-mounted"], {}, 6),
    (["status", "{d}/not-mounted"], {}, 4),
    (["pg-trigger", "install"], {}, 3),
    *[
        (["mount", "-f", "{d}/m", option, value], {}, 2)
        for option, value in (
            ("--file-mode", "20000"),
            ("--file-mode", "rw"),
            ("--file-mode", "9"),
            ("--dir-mode", "-1"),
            ("--dir-mode", "170000"),
            ("--cache-ttl", "inf"),
            ("--cache-ttl", "nan"),
            ("--cache-ttl", "-1"),
            ("--max-stale", "inf"),
            ("--max-stale", "nan"),
            ("--layout", "tree"),
        )
    ],
]


@pytest.mark.parametrize(
    ("args", "env", "code"), CASES, ids=[" ".join(c[0]).encode("unicode_escape").decode() for c in CASES]
)
def test_hostile_arguments(tmp_path: Path, args: list[str], env: dict[str, str], code: int) -> None:
    instance = make_instance(tmp_path, **env)
    instance.cli("put", "a", input=b"v", check=False)
    argv = [arg.replace("{d}", str(tmp_path)) for arg in args]
    result = subprocess.run(
        [*SECRETFS, *argv],
        input=b"v",
        env=instance.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert result.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("secretfs: WARNING:")]
    if code == 2 and any(line.startswith("Error:") for line in lines):
        return  # click's usage report: "Usage:", "Try ... -h", "Error: ..."
    if args[0] == "status":
        return  # status reports on stdout
    assert len(lines) == 1 and lines[0].startswith("secretfs: error: "), err


def test_unsafe_modes_never_reach_the_view(tmp_path: Path) -> None:
    """--file-mode 20000 (a character-device type bit) is a usage error, not a mount of odd files."""
    instance = make_instance(tmp_path)
    result = instance.cli("mount", "-f", str(tmp_path / "m"), "--file-mode", "20000", check=False)
    assert result.returncode == 2
    assert b"07777" in result.stderr


def test_uid_without_allow_other_warns(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    result = instance.cli("mount", "-f", str(tmp_path / "missing" / "m"), "--uid", "1000", check=False)
    assert b"--uid/--gid without --allow-other" in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


def test_ls_prints_names_unambiguously(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    names = ["plain", "two\nlines", "back\\slash", '"quoted', "tab\there"]
    for name in names:
        instance.cli("put", "--file", "/dev/null", name)
    lines = instance.cli("ls").stdout.decode().splitlines()
    assert len(lines) == len(names), lines
    shown = {line if not line.startswith('"') else json.loads(line) for line in lines}
    assert shown == set(names)
    assert {entry["name"] for entry in json.loads(instance.cli("ls", "--json").stdout)} == set(names)


@pytest.mark.mount
def test_busy_umount_names_the_reason(tmp_path: Path) -> None:
    instance = make_instance(tmp_path)
    instance.cli("put", "a", input=b"v")
    with mounted(instance, tmp_path / "m") as m:
        fd = os.open(m.path / "a", os.O_RDONLY)
        try:
            result = instance.cli("umount", str(m.path), check=False)
        finally:
            os.close(fd)
    err = result.stderr.decode()
    assert result.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "busy" in lines[0].lower() and "--lazy" in lines[0], err
