"""Issue 10, finding 19: every command of README.md's Quickstart works as written on a fresh data
directory. The commands are read from the README, so it cannot drift from what works."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import base_env, force_unmount

ROOT = Path(__file__).resolve().parent.parent
MOUNTPOINT = "/run/secretfs"


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README.md's Quickstart has no sh block"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_scripts_mount_ends_in_secretfs_mount() -> None:
    """The test runs `scripts/mount DIR` as what it does after bootstrapping: mkdir -p, then mount."""
    script = (ROOT / "scripts" / "mount").read_text()
    assert 'mkdir -p "$mountpoint"' in script
    assert '.venv/bin/secretfs mount "$mountpoint"' in script


@pytest.mark.mount
def test_quickstart_as_written(tmp_path: Path) -> None:
    commands = quickstart_commands()
    assert commands[0].startswith("scripts/mount ") and commands[-1].startswith(".venv/bin/secretfs umount")
    mountpoint = tmp_path / "run" / "secretfs"
    env = base_env(tmp_path / "data")  # no key configured: the first start generates one
    outputs = []
    try:
        for command in commands:
            shell = command.replace(MOUNTPOINT, str(mountpoint))
            shell = re.sub(r"^scripts/mount (\S+)", r"mkdir -p \1 && .venv/bin/secretfs mount \1", shell)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", shell],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, f"{command!r} exited {result.returncode}: {result.stderr.decode()}"
            assert b"Traceback" not in result.stderr
            outputs.append(result.stdout.decode())
    finally:
        force_unmount(mountpoint)
    by_command = dict(zip(commands, outputs, strict=True))
    assert by_command["cat /run/secretfs/db_password"] == "hunter2"
    assert by_command[".venv/bin/secretfs ls"].splitlines() == ["api/token", "db_password"]
