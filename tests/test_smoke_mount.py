"""The shortest end-to-end path: put with the CLI, read through the mount."""

from __future__ import annotations

import pytest

from tests.support.mount import Instance, Mounted

pytestmark = pytest.mark.mount


def test_put_then_cat(instance: Instance, mnt: Mounted) -> None:
    instance.cli("put", "db_password", input=b"hunter2")
    assert (mnt.path / "db_password").read_bytes() == b"hunter2"
