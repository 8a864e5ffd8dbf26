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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long run: pass --run-slow to include it (CI runs the short version)")
    for item in items:
        if "slow" in item.keywords:
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
