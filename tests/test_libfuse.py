"""secretfs binds libfuse 3 even where libfuse 2 is installed (mfusepy looks for libfuse 2 first)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

from tests.support.mount import Mounted


def test_libfuse2_is_installed_here() -> None:
    # The precondition that makes the next tests mean something: without FUSE_LIBRARY_NAME,
    # mfusepy would load this library.
    assert ctypes.util.find_library("fuse") == "libfuse.so.2"


def test_the_binding_loads_libfuse3_whatever_the_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FUSE_LIBRARY_NAME"}
    env["FUSE_LIBRARY_NAME"] = "fuse"  # even a caller asking for libfuse 2 gets libfuse 3
    code = "from secretfs import fusebind as f; print(f.libfuse_version()[0], f.libfuse_path())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    major, path = out.split()
    assert major == "3" and "fuse3" in path


def test_the_daemon_maps_libfuse3_only(mnt: Mounted) -> None:
    maps = Path(f"/proc/{mnt.proc.pid}/maps").read_text(encoding="utf-8")
    assert "libfuse3.so.3" in maps
    assert "libfuse.so.2" not in maps
