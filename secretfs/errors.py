"""secretfs's own exceptions: the one table of the errno and the exit code each maps to.

Every store and the view raise only these. Messages name secrets but never carry a value.
Each class carries the errno an application sees for it through the mount (`errno`) and the
exit code of the command line (`exit_code`); `errno_for` and `exit_code_for` read them for any
exception (anything that is not a SecretfsError is EIO and exit 1). README.md documents both
tables, and tests/test_error_table.py holds the two to each other.
"""

from __future__ import annotations

from errno import (
    EACCES,
    EEXIST,
    EFBIG,
    EINVAL,
    EIO,
    EISDIR,
    ENAMETOOLONG,
    ENOENT,
    ENOTDIR,
    ENOTEMPTY,
    EPERM,
    EROFS,
    EXDEV,
)
from typing import ClassVar

# Documented process exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_BACKEND = 4
EXIT_KEY = 5
EXIT_NOT_FOUND = 6
EXIT_REFUSED = 7
EXIT_TIMEOUT = 8  # `secretfs watch --wait-timeout`: nothing changed in time


class SecretfsError(Exception):
    """Base of every error secretfs raises on purpose. Each subclass sets both attributes itself."""

    errno: ClassVar[int] = EIO
    exit_code: ClassVar[int] = EXIT_ERROR


class ConfigError(SecretfsError):
    """The configuration is invalid (unknown mode, bad KV version, missing variable in --strict)."""

    errno = EIO
    exit_code = EXIT_CONFIG


class BackendUnavailable(SecretfsError):
    """The backend (database, Vault) is down, timing out, or sealed."""

    errno = EIO
    exit_code = EXIT_BACKEND


class KeyMismatch(SecretfsError):
    """The configured encryption key does not match the database's key canary."""

    errno = EIO
    exit_code = EXIT_KEY


class IntegrityError(SecretfsError):
    """A ciphertext failed authentication (tampered, or encrypted under another key)."""

    errno = EIO
    exit_code = EXIT_KEY


class NotFound(SecretfsError):
    """No secret (or directory) by that name."""

    errno = ENOENT
    exit_code = EXIT_NOT_FOUND


class AccessDenied(SecretfsError):
    """The backend refused the request (403, bad token after re-login)."""

    errno = EACCES
    exit_code = EXIT_REFUSED


class VaultRejected(SecretfsError):
    """Vault refused the request as malformed (400 and other non-retryable 4xx)."""

    errno = EIO
    exit_code = EXIT_ERROR


class ReadOnly(SecretfsError):
    """A mutating operation on a read-only mount or mode."""

    errno = EROFS
    exit_code = EXIT_REFUSED


class NotPermitted(SecretfsError):
    """An operation secretfs never allows (chmod, chown, links, device files)."""

    errno = EPERM
    exit_code = EXIT_REFUSED


class InvalidName(SecretfsError):
    """A name that cannot be a path: empty segment, '.', '..', NUL, or over 256 characters."""

    errno = EINVAL
    exit_code = EXIT_USAGE


class NameTooLong(SecretfsError):
    """A path segment over 255 bytes."""

    errno = ENAMETOOLONG
    exit_code = EXIT_USAGE


class ValueTooLarge(SecretfsError):
    """A value over the 1 MiB limit."""

    errno = EFBIG
    exit_code = EXIT_USAGE


class IsADirectory(SecretfsError):
    """A file operation on a directory."""

    errno = EISDIR
    exit_code = EXIT_ERROR


class NotADirectory(SecretfsError):
    """A directory operation on a file."""

    errno = ENOTDIR
    exit_code = EXIT_ERROR


class DirectoryNotEmpty(SecretfsError):
    """rmdir on a directory that still holds secrets."""

    errno = ENOTEMPTY
    exit_code = EXIT_ERROR


class AlreadyExists(SecretfsError):
    """mkdir over an existing file or directory."""

    errno = EEXIST
    exit_code = EXIT_ERROR


class CrossDevice(SecretfsError):
    """A rename secretfs cannot do in one step (a non-empty directory): callers copy instead."""

    errno = EXDEV
    exit_code = EXIT_ERROR


def errno_for(exc: BaseException) -> int:
    """The errno an application sees for an exception: its class's, or EIO for anything unexpected."""
    if isinstance(exc, SecretfsError):
        return exc.errno
    return EIO


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an exception: its class's, or 1 (other error) for anything unexpected."""
    if isinstance(exc, SecretfsError):
        return exc.exit_code
    return EXIT_ERROR
