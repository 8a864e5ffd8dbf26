"""The Dockerfile: its ENTRYPOINT run here as a container would run it, and its consistency with
the README and docs/containers.md. There is no Docker engine on the test machines, so the image
itself is never built here (docs/containers.md says so).

The ENTRYPOINT runs as PID 1 of new PID and mount namespaces (`unshare --pid --fork --mount`), the
way a container runs it, on the image's own mount path /secrets with its own flags; only the binary
path (/usr/local/bin/secretfs in the image) is replaced by this checkout's .venv/bin/secretfs, and
SECRETFS_DATA_DIR points to a temporary directory instead of the image's /var/lib/secretfs so that
the host's data directory is never touched. The mount lives only in that mount namespace, so a
/secrets seen by the host stays an empty directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.support.mount import make_instance
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_BINARY = "/usr/local/bin/secretfs"
VENV_BINARY = str(Path(sys.executable).parent / "secretfs")
MOUNT_PATH = Path("/secrets")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def one(keyword: str) -> str:
    found = [rest for key, rest in instructions() if key == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


def exec_form(keyword: str) -> list[str]:
    value = json.loads(one(keyword))
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{keyword} must be JSON exec form"
    return value


def healthcheck_command() -> list[str]:
    rest = one("HEALTHCHECK")
    _, _, command = rest.partition("CMD ")
    argv: list[str] = json.loads(command)
    return argv


@pytest.mark.mount
def test_entrypoint_and_healthcheck_work_as_in_a_container(tmp_path: Path) -> None:
    entrypoint, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
    assert entrypoint[0] == IMAGE_BINARY
    argv = [VENV_BINARY, *entrypoint[1:], *cmd]
    assert str(MOUNT_PATH) in argv
    created = not MOUNT_PATH.exists()
    if created:
        MOUNT_PATH.mkdir(mode=0o755)  # as the image's `install -d -m 0755 /secrets`
    assert MOUNT_PATH.is_dir() and not any(MOUNT_PATH.iterdir()), "/secrets on this host must be an empty directory"
    instance = make_instance(tmp_path)
    instance.cli("put", "db_password", input=b"from-the-image")
    log = tmp_path / "container.log"
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--kill-child", "--", *argv],
            env=instance.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def inside(*command: str, user: bool = False) -> subprocess.CompletedProcess[bytes]:
        prefix = ["nsenter", f"--target={pid1}", "--mount", "--"]
        if user:
            prefix += ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        return subprocess.run([*prefix, *command], env=instance.env, capture_output=True, timeout=60, check=False)

    def first_child() -> int:
        children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
        assert runner.poll() is None, log.read_text()
        return int(children[0]) if children else 0

    def healthy() -> bool:
        if inside(*health).returncode == 0:
            return True
        assert runner.poll() is None, log.read_text()
        return False

    pid1 = 0
    try:
        pid1 = wait_until(first_child, 30, message=log.read_text)
        # The container's PID 1 is secretfs itself.
        assert "secretfs" in Path(f"/proc/{pid1}/cmdline").read_bytes().decode()
        assert Path(f"/proc/{pid1}/status").read_text().count("NSpid:") == 1
        assert Path(f"/proc/{pid1}/status").read_text().split("NSpid:")[1].split()[1] == "1"
        health = [part.replace(IMAGE_BINARY, VENV_BINARY) for part in healthcheck_command()]
        wait_until(healthy, 30, interval=0.1, message=log.read_text)
        # Another uid (another container's process) reads through --allow-other and the CMD's modes.
        read = inside("cat", str(MOUNT_PATH / "db_password"), user=True)
        assert read.returncode == 0, read.stderr
        assert read.stdout == b"from-the-image"
        write = inside("sh", "-c", f"printf x > {MOUNT_PATH}/db_password", user=True)
        assert write.returncode != 0
        # The host's /secrets is untouched: the mount exists only in the container's namespace.
        assert not any(MOUNT_PATH.iterdir())
        # docker stop: SIGTERM to PID 1; it unmounts and exits 0, and the health check then fails.
        os.kill(pid1, signal.SIGTERM)
        assert runner.wait(timeout=20) == 0, log.read_text()
    finally:
        if runner.poll() is None:
            runner.kill()  # --kill-child takes PID 1, and with it the namespaces, down
            runner.wait(timeout=10)
        if created:
            MOUNT_PATH.rmdir()


def test_dockerfile_matches_readme_and_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "containers.md").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    # Base: Debian 12 (bookworm) slim with a Python the package supports.
    base = one("FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-bookworm", base)
    assert match, base
    minimum = tuple(int(x) for x in re.findall(r"\d+", pyproject["project"]["requires-python"])[:2])
    assert (int(match[1]), int(match[2])) >= minimum
    assert base in docs

    # Packages: fuse3 (what README names for libfuse 3 and fusermount3), nothing from the test set.
    installs = [rest for key, rest in instructions() if key == "RUN" and "apt-get install" in rest]
    assert len(installs) == 1
    packages = [w for w in shlex.split(installs[0].split("apt-get install", 1)[1]) if not w.startswith("-")]
    packages = packages[: packages.index("&&")] if "&&" in packages else packages
    assert packages == ["fuse3"]
    assert "`fuse3`" in readme and "fuse3" in docs

    # secretfs from the source tree: the files it copies exist and are enough for pip.
    copies = [rest for key, rest in instructions() if key == "COPY"]
    for copy in copies:
        for source in shlex.split(copy)[:-1]:
            assert (ROOT / source).exists(), source
    assert any("pip install --no-cache-dir ." in rest for key, rest in instructions() if key == "RUN")
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    assert ".venv" in ignored and ".git" in ignored
    for copy in copies:
        for source in shlex.split(copy)[:-1]:
            assert source not in ignored

    # Entrypoint: foreground, /secrets, --allow-other; the docs show the same command line.
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint == [IMAGE_BINARY, "mount", "-f", "/secrets", "--allow-other"]
    assert shlex.join(["secretfs", *entrypoint[1:]]) in docs
    assert shlex.join(exec_form("CMD")) in docs
    assert "secretfs status /secrets" in " ".join(healthcheck_command())
    assert "secretfs status /secrets" in docs
    assert one("STOPSIGNAL") == "SIGTERM"
    assert "not tested here" in docs.lower() and "no Docker engine" in docs
    assert "docs/containers.md" in readme and "docs/systemd.md" in readme


def test_image_sources_build_secretfs(tmp_path: Path) -> None:
    """What the Dockerfile copies (pyproject.toml, README.md, secretfs/) is enough to build secretfs:
    the setuptools backend builds a source distribution from exactly those files, with the package
    and the `secretfs` console script. (The wheel step needs the `wheel` package, which pip
    provides in the image build's isolated environment.)"""
    context = tmp_path / "context"
    context.mkdir()
    for key, rest in instructions():
        if key != "COPY":
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, context / source)
    dist = tmp_path / "dist"
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=context, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sdist = dist / result.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        entry_points = next(n for n in names if n.endswith("egg-info/entry_points.txt"))
        extracted = tar.extractfile(entry_points)
        assert extracted is not None
        assert "secretfs = secretfs.cli:main" in extracted.read().decode()
    assert any(n.endswith("secretfs/cli.py") for n in names)
    assert any(n.endswith("secretfs/daemon.py") for n in names)
