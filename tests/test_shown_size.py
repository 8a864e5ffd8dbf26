"""The 1 MiB limit applies to what a file shows, not only to what is written (issue 10, 6 and 14).

A JSON object is shown in canonical form, indented: 800 KB of compact JSON showed as 2.8 MB, and a
201 KB value nested 500 deep as 101 MB (300 MB of daemon memory). Now a write whose file would show
more than the limit is refused (EFBIG at close, exit 2 for `put`) and stores nothing; a value
stored by another program that would show more is refused on read (EFBIG) while its neighbours
work; the rendering is given up as soon as it passes the limit. So whatever a file shows can be
copied within the mount.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from secretfs import render
from secretfs.errors import EXIT_USAGE, ValueTooLarge
from tests.support.mount import Instance, mounted, os_read
from tests.test_bad_rows import db_path, insert


def nested(depth: int, items: int = 50_000) -> dict[str, object]:
    """About 2 x items bytes of compact JSON; each of its items shown on a line indented 2 x depth."""
    value: dict[str, object] = {"leaf": [0] * items}
    for level in range(depth):
        value = {f"k{level}": value}
    return value


def wide(size: int) -> dict[str, object]:
    """Compact JSON of about `size` bytes whose canonical rendering is about 3.5 times larger."""
    return {f"k{i:06d}": [1, 2, 3] for i in range(size // 22)}


def test_canonical_json_gives_up_at_the_limit_without_building_it() -> None:
    deep = nested(500)
    assert len(json.dumps(deep, separators=(",", ":"))) < 200_000
    started = time.monotonic()
    with pytest.raises(ValueTooLarge):
        render.canonical_json(deep)
    assert time.monotonic() - started < 5  # it stops early: the whole rendering is ~100 MB
    small = {"a": [1, {"b": "c"}]}
    assert render.canonical_json(small) == (json.dumps(small, sort_keys=True, indent=2) + "\n").encode()


def test_stored_value_checks_what_the_file_would_show() -> None:
    compact = json.dumps(wide(800_000), separators=(",", ":")).encode()
    assert len(compact) < render.MAX_VALUE_BYTES
    with pytest.raises(ValueTooLarge):
        render.stored_value(compact)
    fits = json.dumps(wide(200_000), separators=(",", ":")).encode()
    assert render.stored_value(fits) == json.loads(fits)


@pytest.mark.mount
def test_the_round_trip_works_and_oversize_writes_store_nothing(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "doc", input=json.dumps(wide(400_000)).encode())
    with mounted(instance, tmp_path / "mnt") as m:
        shown = os_read(m.path / "doc")
        assert render.MAX_VALUE_BYTES // 2 < len(shown) <= render.MAX_VALUE_BYTES
        shutil.copyfile(m.path / "doc", m.path / "copy")  # what a file shows can be written back
        assert os_read(m.path / "copy") == shown

        too_big = json.dumps(wide(800_000), separators=(",", ":")).encode()
        fd = os.open(m.path / "doc", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, too_big)
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.EFBIG
        assert os_read(m.path / "doc") == shown  # the old value stays

    put = instance.cli("put", "big", input=too_big, check=False)
    assert put.returncode == EXIT_USAGE
    assert b"'big'" in put.stderr and b"Traceback" not in put.stderr
    assert instance.cli("get", "big", check=False).returncode != 0  # nothing was stored


@pytest.mark.mount
def test_a_stored_value_too_large_to_show_fails_alone(instance: Instance, tmp_path: Path) -> None:
    instance.cli("put", "good", input=b"good-value")
    insert(db_path(instance), "deep", json.dumps(nested(500)))  # written by another program
    with mounted(instance, tmp_path / "mnt") as m:
        with pytest.raises(OSError) as info:
            os_read(m.path / "deep")
        assert info.value.errno == errno.EFBIG
        assert os_read(m.path / "good") == b"good-value"
        assert sorted(os.listdir(m.path)) == ["deep", "good"]
    got = instance.cli("get", "deep", check=False)
    assert got.returncode == EXIT_USAGE and b"Traceback" not in got.stderr


@pytest.mark.mount
def test_json_nested_too_deep_to_parse_is_kept_as_text(instance: Instance, tmp_path: Path) -> None:
    """100,000 levels: Python's JSON parser gives up (RecursionError, a traceback before); the
    content is stored as text and shown exactly as written."""
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    put = instance.cli("put", "deep", input=deep, check=False)
    assert put.returncode == 0 and b"Traceback" not in put.stderr, put.stderr
    assert instance.cli("get", "deep").stdout == deep
    with mounted(instance, tmp_path / "mnt") as m:
        (m.path / "again").write_bytes(deep)
        assert os_read(m.path / "again") == deep
