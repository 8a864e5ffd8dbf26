"""secretfs's own exceptions and the process exit codes they map to.

Every store and the view raise only these. Messages name secrets but never carry a value.
The FUSE adapter maps each class to one errno; the CLI maps each class to one exit code.
"""

from __future__ import annotations

# Documented process exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_BACKEND = 4
EXIT_KEY = 5
EXIT_NOT_FOUND = 6
EXIT_REFUSED = 7


class SecretfsError(Exception):
    """Base of every error secretfs raises on purpose."""

    exit_code = EXIT_ERROR


class ConfigError(SecretfsError):
    """The configuration is invalid (unknown mode, bad KV version, missing variable in --strict)."""

    exit_code = EXIT_CONFIG


class BackendUnavailable(SecretfsError):
    """The backend (database, Vault) is down, timing out, or sealed."""

    exit_code = EXIT_BACKEND


class KeyMismatch(SecretfsError):
    """The configured encryption key does not match the database's key canary."""

    exit_code = EXIT_KEY


class IntegrityError(SecretfsError):
    """A ciphertext failed authentication (tampered, or encrypted under another key)."""

    exit_code = EXIT_KEY


class NotFound(SecretfsError):
    """No secret (or directory) by that name."""

    exit_code = EXIT_NOT_FOUND


class AccessDenied(SecretfsError):
    """The backend refused the request (403, bad token after re-login)."""

    exit_code = EXIT_REFUSED


class ReadOnly(SecretfsError):
    """A mutating operation on a read-only mount or mode."""

    exit_code = EXIT_REFUSED


class NotPermitted(SecretfsError):
    """An operation secretfs never allows (chmod, chown, links, device files)."""

    exit_code = EXIT_REFUSED


class InvalidName(SecretfsError):
    """A name that cannot be a path: empty segment, '.', '..', NUL, or over 256 characters."""

    exit_code = EXIT_USAGE


class NameTooLong(SecretfsError):
    """A path segment over 255 bytes."""

    exit_code = EXIT_USAGE


class ValueTooLarge(SecretfsError):
    """A value over the 1 MiB limit."""

    exit_code = EXIT_USAGE


class IsADirectory(SecretfsError):
    """A file operation on a directory."""


class NotADirectory(SecretfsError):
    """A directory operation on a file."""


class DirectoryNotEmpty(SecretfsError):
    """rmdir on a directory that still holds secrets."""


class AlreadyExists(SecretfsError):
    """mkdir over an existing file or directory."""


class CrossDevice(SecretfsError):
    """A rename secretfs cannot do in one step (a non-empty directory): callers copy instead."""
