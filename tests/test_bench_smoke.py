"""bench/run still works: its smallest mode runs every section over SQLite and prints the tables.

Not a timed test: nothing here asserts a speed; the figures belong to docs/performance.md.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("gcc") is None, reason="bench/run compiles its C client with gcc")
def test_bench_smoke_prints_every_table() -> None:
    result = subprocess.run(
        [str(REPO / "bench" / "run"), "--smoke", "--no-doc"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    for heading in (
        "a. Warm read",
        "b. Cold read",
        "c. Scale",
        "d. Concurrency",
        "e. Write",
        "f. Freshness",
        "Targets",
    ):
        assert f"**{heading}" in out, heading
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    for row in (
        "tmpfs (baseline)",
        "minimal mfusepy direct_io fs (baseline)",
        "SQLite kernel read-only",
        "SQLite kernel writable",
        "SQLite direct read-only",
        "SQLite direct writable",
        "SQLite",  # cold read
        "200",  # scale
        "direct writable",  # concurrency
        "SQLite direct store write",
        "SQLite kernel",  # freshness
        "SQLite direct",
    ):
        assert row in rows, row
    assert "n/a" not in out.split("**c. Scale")[0], "every warm and cold figure was measured"
