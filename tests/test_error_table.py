"""The one error table: each error class's errno and exit code, held to README.md's two tables."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

import secretfs
from secretfs import errors

README = Path(__file__).resolve().parent.parent / "README.md"

# Where README.md names a class's condition: a phrase of the row (or of its part, for rows that
# list several conditions as "a / b" against "`EA` / `EB`"), and the class whose value it states.
ERRNO_CONDITIONS: dict[type[errors.SecretfsError], str] = {
    errors.NotFound: "no such secret",
    errors.AccessDenied: "the store or vault refused",
    errors.ReadOnly: "read-only mount or mode",
    errors.BackendUnavailable: "backend down",
    errors.IntegrityError: "ciphertext fails authentication",
    errors.InvalidName: "bad name",
    errors.NameTooLong: "name too long",
    errors.ValueTooLarge: "value too big",
    errors.NotPermitted: "links, device files",
    errors.IsADirectory: "a file operation on a directory",
    errors.NotADirectory: "a directory operation on a file",
    errors.DirectoryNotEmpty: "of a directory that holds secrets",
    errors.AlreadyExists: "over an existing name",
    errors.CrossDevice: "of a populated directory",
    errors.VaultRejected: "vault rejected a malformed request",
}
EXIT_CONDITIONS: dict[type[errors.SecretfsError], str] = {
    errors.InvalidName: "invalid name",
    errors.ValueTooLarge: "value too large",
    errors.ConfigError: "configuration",
    errors.BackendUnavailable: "backend unavailable",
    errors.KeyMismatch: "key mismatch",
    errors.IntegrityError: "integrity failure",
    errors.NotFound: "not found",
    errors.AccessDenied: "access denied",
    errors.ReadOnly: "read-only mode",
}


def _import_package() -> None:
    """Import every secretfs module, so that error classes defined outside errors.py are walked too."""
    for module in pkgutil.walk_packages(secretfs.__path__, "secretfs."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def _name(cls: type) -> str:
    return cls.__name__


def _by_name(classes: Iterable[type[errors.SecretfsError]]) -> list[type[errors.SecretfsError]]:
    return sorted(classes, key=_name)


def _error_classes() -> list[type[errors.SecretfsError]]:
    _import_package()
    found: list[type[errors.SecretfsError]] = []
    pending = list(errors.SecretfsError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return _by_name(found)


CLASSES = _error_classes()


def _table(header: str) -> list[tuple[str, str]]:
    """The rows (first cell, second cell) of the README table whose header row is `header`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    assert re.fullmatch(r"\|(-+\|)+", lines[start + 1]), f"no table under {header!r}"
    rows: list[tuple[str, str]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 2, line
        rows.append((cells[0], cells[1]))
    assert rows, f"empty table under {header!r}"
    return rows


def readme_errnos() -> list[tuple[str, int]]:
    """(condition, errno) pairs of the README's errno table; a row 'a / b' with '`EA` / `EB`' gives two."""
    pairs: list[tuple[str, int]] = []
    for condition, value in _table("| what happened | errno |"):
        names = re.findall(r"`(E[A-Z]+)`", value)
        assert names, f"no errno named in {value!r}"
        conditions = condition.split(" / ")
        if len(names) > 1:
            assert len(conditions) == len(names), f"{condition!r} does not pair with {value!r}"
        else:
            conditions = [condition]
        pairs.extend((text.lower(), getattr(errno, name)) for text, name in zip(conditions, names, strict=True))
    return pairs


def readme_exit_codes() -> list[tuple[str, int]]:
    """(meaning, code) rows of the README's exit-code table."""
    return [(meaning.lower(), int(code)) for code, meaning in _table("| code | meaning |")]


def _documented(table: list[tuple[str, int]], phrase: str) -> int:
    matches = {value for text, value in table if phrase in text}
    assert len(matches) == 1, f"README names {phrase!r} with {sorted(matches) or 'no value'}"
    return matches.pop()


def test_walk_finds_the_classes() -> None:
    assert errors.NotFound in CLASSES and errors.VaultRejected in CLASSES and errors.CrossDevice in CLASSES


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_each_class_sets_errno_and_exit_code(cls: type[errors.SecretfsError]) -> None:
    # Set on the class itself, so a new class cannot silently inherit EIO and exit 1.
    assert "errno" in vars(cls) and "exit_code" in vars(cls), f"{cls.__name__} must set errno and exit_code"
    assert cls.errno in errno.errorcode
    assert cls.exit_code in {code for _, code in readme_exit_codes()} - {errors.EXIT_OK}
    instance = cls("message")
    assert errors.errno_for(instance) == cls.errno
    assert errors.exit_code_for(instance) == cls.exit_code


def test_other_exceptions_are_eio_and_exit_1() -> None:
    for exc in (ValueError("x"), KeyError("x"), OSError(errno.ENOENT, "x"), KeyboardInterrupt()):
        assert errors.errno_for(exc) == errno.EIO
        assert errors.exit_code_for(exc) == errors.EXIT_ERROR == 1


def test_readme_errno_table_lists_every_errno() -> None:
    documented = {value for _, value in readme_errnos()}
    used = {cls.errno for cls in CLASSES}
    assert used <= documented, f"README's errno table lacks {sorted(errno.errorcode[e] for e in used - documented)}"


def test_readme_exit_code_table_lists_every_code() -> None:
    documented = {code for _, code in readme_exit_codes()}
    used = {cls.exit_code for cls in CLASSES}
    assert used <= documented, f"README's exit-code table lacks {sorted(used - documented)}"
    assert documented == set(range(9))


@pytest.mark.parametrize("cls", _by_name(ERRNO_CONDITIONS), ids=_name)
def test_readme_errno_agrees(cls: type[errors.SecretfsError]) -> None:
    documented = _documented(readme_errnos(), ERRNO_CONDITIONS[cls])
    assert cls.errno == documented, (
        f"{cls.__name__}: {errno.errorcode[cls.errno]}, README {errno.errorcode[documented]}"
    )


@pytest.mark.parametrize("cls", _by_name(EXIT_CONDITIONS), ids=_name)
def test_readme_exit_code_agrees(cls: type[errors.SecretfsError]) -> None:
    assert cls.exit_code == _documented(readme_exit_codes(), EXIT_CONDITIONS[cls])


def test_exit_code_constants_are_the_documented_codes() -> None:
    constants = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert sorted(constants.values()) == list(range(9))
