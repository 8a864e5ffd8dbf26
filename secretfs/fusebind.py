"""The one import of the FUSE binding (mfusepy), always bound to libfuse 3.

mfusepy looks for libfuse 2 before libfuse 3 unless FUSE_LIBRARY_NAME says otherwise, so this
module sets it before the import. Everything else imports FUSE names from here.
"""

from __future__ import annotations

import os

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

FUSE = mfusepy.FUSE
FuseOSError = mfusepy.FuseOSError
Operations = mfusepy.Operations
fuse_get_context = mfusepy.fuse_get_context


def libfuse_version() -> tuple[int, int]:
    """(major, minor) of the libfuse the binding loaded."""
    return int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor)


def libfuse_path() -> str:
    """The shared library file mfusepy loaded."""
    return str(getattr(mfusepy, "_libfuse_path", ""))
