"""File contents <-> secret values, and which names can be paths. Pure functions, no I/O.

Rendering: {"value": text} -> the text; {"value": b64, "encoding": "base64"} -> the bytes;
anything else -> canonical JSON (sorted keys, two-space indent, non-ASCII kept, one newline).
Parsing: a UTF-8 JSON object -> that object; other UTF-8 -> {"value": text}; other bytes -> base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from secretfs.errors import InvalidName, NameTooLong, ValueTooLarge

MAX_VALUE_BYTES = 1024 * 1024
MAX_NAME_CHARS = 256
MAX_SEGMENT_BYTES = 255


_SURROGATE = re.compile("[\ud800-\udfff]")


_ENCODER = json.JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, two-space indent, one newline; ValueTooLarge once it passes MAX_VALUE_BYTES.

    Indentation grows with depth (a 200 KB value nested 500 deep shows as 100 MB), so the rendering
    is built piece by piece and given up as soon as it is too large: what a file shows, and what
    rendering it costs, is bounded like what a write may store.
    """
    parts: list[str] = []
    size = 0
    for chunk in _ENCODER.iterencode(value):
        size += len(chunk)
        if size > MAX_VALUE_BYTES:
            raise ValueTooLarge(f"the value shows as more than {MAX_VALUE_BYTES} bytes (a file shows at most that)")
        parts.append(chunk)
    parts.append("\n")
    # Lone surrogates (from a JSON escape such as "\ud800") have no UTF-8 form: keep them escaped.
    shown = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", "".join(parts)).encode("utf-8")
    if len(shown) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"the value shows as {len(shown)} bytes; a file shows at most {MAX_VALUE_BYTES}")
    return shown


def stored_value(content: bytes) -> Any:
    """The value to store for a file's whole content, refused (ValueTooLarge) when the content, or
    the file that would show it, is over MAX_VALUE_BYTES: whatever a file shows can be written back."""
    if len(content) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"values are at most {MAX_VALUE_BYTES} bytes")
    value = parse(content)
    render(value)
    return value


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def render(value: Any) -> bytes:
    """The bytes a file shows for a secret value."""
    if isinstance(value, dict):
        text = value.get("value")
        if isinstance(text, str):
            if len(value) == 1 and (raw := _utf8(text)) is not None:
                return raw
            if len(value) == 2 and value.get("encoding") == "base64":
                try:
                    return base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    pass
    return canonical_json(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse(content: bytes) -> dict[str, Any]:
    """The secret value stored for a file's whole content."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return {"value": base64.b64encode(content).decode("ascii"), "encoding": "base64"}
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse: kept as text
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"value": text}


def render_key(value: Any) -> bytes:
    """A key's file in the `keys` layout: a string raw, anything else as canonical JSON."""
    if isinstance(value, str) and (raw := _utf8(value)) is not None:
        return raw
    return canonical_json(value)


def segment_ok(segment: str) -> bool:
    return (
        segment not in ("", ".", "..")
        and "\x00" not in segment
        and "/" not in segment
        and len(segment.encode("utf-8", "surrogatepass")) <= MAX_SEGMENT_BYTES
    )


def is_valid_name(name: str) -> bool:
    """Whether a stored name can be shown as a path."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(name) <= MAX_NAME_CHARS and all(segment_ok(s) for s in name.split("/"))


def check_new_name(name: str) -> None:
    """Raise InvalidName or NameTooLong for a name that cannot be created."""
    for segment in name.split("/"):
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise NameTooLong(f"a path segment is over {MAX_SEGMENT_BYTES} bytes")
    if len(name) > MAX_NAME_CHARS:
        raise NameTooLong(f"secret names are at most {MAX_NAME_CHARS} characters")
    if not is_valid_name(name):
        raise InvalidName(f"{name!r} is not a valid secret name")
