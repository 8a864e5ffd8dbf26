"""Fixtures shared by the whole suite. Server fixtures live in tests/support/."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mount import Instance, Mounted, make_instance, mounted
from tests.support.pg import pg_server, pg_session_url, pg_url

__all__ = ["pg_server", "pg_session_url", "pg_url"]  # fixtures, re-exported for the whole suite

pytest_plugins = ["tests.support.bao"]  # the OpenBao server fixtures: bao_server, fresh_bao


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run long fuzz/load tests (marked slow)")


# Markers from the fixtures a test uses (directly or through other fixtures), and from the backend
# it is parametrized with (the `db` fixtures that take "postgresql" ask for pg_url at run time). A
# test that mounts without the `mnt` fixture (mounted(), its own daemon) is marked where it is
# written: `@pytest.mark.mount`, or `pytestmark = pytest.mark.mount` for a whole module.
MOUNT_FIXTURES = frozenset({"mnt"})
SERVER_FIXTURES = frozenset({"pg_server", "pg_session_url", "pg_url", "bao_server", "fresh_bao"})
SERVER_PARAMS = frozenset({"postgresql"})
SLOW_TIMEOUT = 3600  # seconds; pyproject.toml's default (300) is for everything else


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    skip = pytest.mark.skip(reason="long run: pass --run-slow to include it (CI runs the short version)")
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & MOUNT_FIXTURES:
            item.add_marker(pytest.mark.mount)
        callspec = getattr(item, "callspec", None)
        params = list(callspec.params.values()) if callspec is not None else []
        if fixtures & SERVER_FIXTURES or any(isinstance(p, str) and p in SERVER_PARAMS for p in params):
            item.add_marker(pytest.mark.server)
        if "slow" in item.keywords:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
            if not run_slow:
                item.add_marker(skip)


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    """A secretfs configuration on a private SQLite database and key."""
    return make_instance(tmp_path)


@pytest.fixture
def mnt(instance: Instance, tmp_path: Path) -> Iterator[Mounted]:
    """A live writable mount over the instance's SQLite database."""
    with mounted(instance, tmp_path / "mnt") as m:
        yield m


@pytest.fixture
def credentials_dir() -> Iterator[Path]:
    """Like systemd's $CREDENTIALS_DIRECTORY: in memory (tmpfs), not on disk."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="secretfs-creds-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
