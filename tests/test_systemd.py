"""The systemd units: `systemd-analyze verify`, their settings, their ExecStart run as systemd would
(NOTIFY_SOCKET, CREDENTIALS_DIRECTORY, SIGTERM), and why namespace hardening is left out.

systemd is not PID 1 here, so the units are not started by systemd itself. `verify` needs the
ExecStart binary to exist: the tests verify copies whose ExecStart path (/usr/local/bin/secretfs,
the path docs/systemd.md installs) is rewritten to this checkout's .venv/bin/secretfs, and nothing else.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secretfs import config, mounts
from tests.support.mount import SECRETFS, Instance, base_env, force_unmount
from tests.support.wait import wait_until
from tests.test_notify import NotifyListener

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/usr/local/bin/secretfs"
VENV_BINARY = Path(sys.executable).parent / "secretfs"
SECRET_VARIABLES = [
    config.ENV_SECRET,
    config.ENV_AUTH_SECRET,
    config.ENV_SECRET_PREVIOUS,
    config.VAULT_PREFIX + "TOKEN",
]
# Directives that put the service in its own mount namespace: a FUSE mount made there is not seen by the host.
NAMESPACE_DIRECTIVES = [
    "ProtectSystem",
    "PrivateTmp",
    "ProtectHome",
    "PrivateDevices",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "PrivateUsers",
    "DynamicUser",
    "MemoryDenyWriteExecute",
    "SystemCallFilter",
]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_for_verify(src: Path, dest_dir: Path, name: str) -> Path:
    text = src.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    dest = dest_dir / name
    dest.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={VENV_BINARY} "))
    return dest


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: scripts/bootstrap --test installs Debian's systemd package")
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )


@pytest.mark.parametrize(
    ("unit", "name"), [("secretfs.service", "secretfs.service"), ("secretfs@.service", "secretfs@demo.service")]
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str, name: str) -> None:
    # A template is verified as an instance (secretfs@demo.service), the way systemd loads it.
    assert VENV_BINARY.exists()
    result = verify(unit_for_verify(UNITS / unit, tmp_path, name))
    assert result.returncode == 0, result.stderr
    # verify only warns (exit 0) on unknown keys and unparsable values: any output is a failure here.
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above bites: a misspelt key, a bad value and a missing binary are all reported."""
    good = unit_for_verify(UNITS / "secretfs.service", tmp_path, "good.service").read_text()
    (tmp_path / "typo.service").write_text(
        good.replace("Type=notify", "Tpye=notify").replace("LimitCORE=0", "LimitCORE=x")
    )
    result = verify(tmp_path / "typo.service")
    assert "Unknown key 'Tpye'" in result.stderr
    assert "LimitCORE" in result.stderr or "resource value" in result.stderr
    (tmp_path / "nobin.service").write_text(good.replace(str(VENV_BINARY), "/nonexistent/secretfs"))
    result = verify(tmp_path / "nobin.service")
    assert result.returncode != 0
    assert "not executable" in result.stderr


@pytest.mark.parametrize("unit", ["secretfs.service", "secretfs@.service"])
def test_unit_settings(unit: str) -> None:
    text = (UNITS / unit).read_text()
    service = parse_unit(text)["Service"]
    template = "@" in unit
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == ["-/etc/secretfs/%i.env" if template else "-/etc/secretfs/secretfs.env"]
    exec_start = shlex.split(service["ExecStart"][0])
    mountpoint = "/run/secretfs/%i" if template else "/run/secretfs"
    assert exec_start[:4] == [INSTALLED_BINARY, "mount", "-f", mountpoint]
    assert service["RuntimeDirectory"] == ["secretfs/%i" if template else "secretfs"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    loaded = {value.split(":", 1)[0] for value in service["LoadCredential"]}
    assert loaded == set(SECRET_VARIABLES)
    if template:
        # Each instance has its own credentials in the credential store.
        for value in service["LoadCredential"]:
            name, _, source = value.partition(":")
            assert source == f"secretfs-%i.{name}"
        assert service["Environment"] == ["SECRETFS_DATA_DIR=/var/lib/secretfs/%i"]
    # Hardening that keeps FUSE working.
    assert service["DeviceAllow"] == ["/dev/fuse rw"]
    assert service["DevicePolicy"] == ["closed"]
    assert service["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN CAP_DAC_READ_SEARCH"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["LimitCORE"] == ["0"]
    # Left out, each named in a comment saying why.
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for directive in NAMESPACE_DIRECTIVES:
        assert directive not in service, f"{directive} would hide the mount or break ctypes"
        assert re.search(rf"\b{directive}=", comments), f"{directive} is not explained"


def test_template_and_plain_unit_differ_only_in_the_instance() -> None:
    plain = parse_unit((UNITS / "secretfs.service").read_text())
    template = parse_unit((UNITS / "secretfs@.service").read_text())
    instance_keys = {
        "Description",
        "EnvironmentFile",
        "LoadCredential",
        "RuntimeDirectory",
        "StateDirectory",
        "ExecStart",
        "Environment",
    }
    for section in ("Unit", "Service", "Install"):
        for key in set(plain[section]) | set(template[section]):
            if key not in instance_keys:
                assert plain[section].get(key) == template[section].get(key), (section, key)


@pytest.mark.mount
def test_exec_start_runs_as_systemd_would(tmp_path: Path, credentials_dir: Path) -> None:
    """The template's ExecStart, with what systemd provides: NOTIFY_SOCKET, CREDENTIALS_DIRECTORY,
    the instance's SECRETFS_DATA_DIR and $SECRETFS_MOUNT_OPTIONS from the environment file; then
    SIGTERM, as `systemctl stop` sends it. The mount point is a temporary directory instead of
    /run/secretfs/%i, so that a secretfs service running on this host is never touched."""
    service = parse_unit((UNITS / "secretfs@.service").read_text())["Service"]
    data_dir = tmp_path / "var-lib-secretfs-demo"
    key = secrets.token_urlsafe(24)
    writer = Instance(data_dir, base_env(data_dir, ARCHESTRA_SECRETS_ENCRYPTION_SECRET=key))
    writer.cli("put", "db_password", input=b"from-the-unit")
    (credentials_dir / config.ENV_SECRET).write_text(key)
    mountpoint = tmp_path / "run-secretfs-demo"
    mountpoint.mkdir()
    env_file = {"SECRETFS_MOUNT_OPTIONS": "--read-only --file-mode 0440"}
    argv = []
    for word in shlex.split(service["ExecStart"][0]):
        if word == INSTALLED_BINARY:
            argv.append(str(VENV_BINARY))
        elif word == "$SECRETFS_MOUNT_OPTIONS":
            argv.extend(env_file["SECRETFS_MOUNT_OPTIONS"].split())
        else:
            argv.append(word.replace("/run/secretfs/%i", str(mountpoint)))
    assert argv[:4] == [str(VENV_BINARY), "mount", "-f", str(mountpoint)]
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    env = base_env(data_dir, NOTIFY_SOCKET=listener.address, CREDENTIALS_DIRECTORY=str(credentials_dir))
    log = tmp_path / "journal.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        listener.wait_for("READY", 30)
        target = mountpoint / "db_password"
        assert target.read_bytes() == b"from-the-unit"
        assert oct(target.stat().st_mode & 0o777) == "0o440"
        with pytest.raises(OSError):
            target.write_bytes(b"x")  # --read-only from the environment file
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", 15)
        assert proc.wait(timeout=15) == 0, log.read_text()
        assert mounts.find_mount(mountpoint) is None
        assert key not in log.read_text()
    finally:
        listener.close()
        force_unmount(mountpoint)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def namespace_mount_seen_on_host(tmp_path: Path, instance: Instance, propagation: str, setup: str) -> bool:
    """Mount secretfs from a process in its own mount namespace (set up by `setup`) under a shared
    directory (as / is on a systemd host) and report whether the host namespace sees the mount."""
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        mnt = shared / "mnt"
        mnt.mkdir()
        script = f"{setup} && exec {shlex.join([*SECRETFS, 'mount', '-f', str(mnt)])}"
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", propagation, "sh", "-c", script], env=instance.env
        )
        inside = Path(f"/proc/{proc.pid}/mountinfo")

        def mounted_inside() -> bool:  # mounted inside the namespace
            if str(mnt) in inside.read_text():
                return True
            assert proc.poll() is None
            return False

        try:
            wait_until(mounted_inside, 30, interval=0.05, message=f"{mnt} not mounted inside the namespace")
            time.sleep(0.5)
            return mounts.find_mount(mnt) is not None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            force_unmount(mnt)
    finally:
        subprocess.run(["umount", "-l", str(shared)], check=False)


@pytest.mark.mount
def test_namespace_hardening_hides_the_mount_from_the_host(instance: Instance, tmp_path: Path) -> None:
    """Why ProtectSystem=, PrivateTmp= and the like are left out: systemd runs such a service in a
    mount namespace made a slave of the host's (then MountFlags=, here shared), so the mount stays
    inside. The control: a namespace whose mounts stay peers of the host's does propagate."""
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare --mount")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert namespace_mount_seen_on_host(tmp_path / "a", instance, "slave", "mount --make-rshared /") is False
    assert namespace_mount_seen_on_host(tmp_path / "b", instance, "unchanged", "true") is True
