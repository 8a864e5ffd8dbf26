"""File contents <-> secret values (README "The file view": rules 1-3 and the write rules), and name validity.

Expected bytes are written out by hand here, not produced by secretfs.render.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from secretfs import render
from secretfs.errors import InvalidName, NameTooLong

# ----- rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # Rule 1: {"value": text} -> the text, byte for byte.
        ({"value": "hunter2"}, b"hunter2"),
        ({"value": "line\n"}, b"line\n"),
        ({"value": "two\n\n"}, b"two\n\n"),
        ({"value": ""}, b""),
        ({"value": "grüße 🔑"}, "grüße 🔑".encode()),
        ({"value": "  {not json"}, b"  {not json"),
        ({"value": '{"looks": "like json"}'}, b'{"looks": "like json"}'),
        # Rule 2: {"value": base64, "encoding": "base64"} -> the decoded bytes.
        ({"value": "AAH/", "encoding": "base64"}, b"\x00\x01\xff"),
        ({"value": "", "encoding": "base64"}, b""),
        ({"value": "aGk=", "encoding": "base64"}, b"hi"),
        # Rule 3: anything else -> canonical JSON.
        ({"value": "x", "other": "y"}, b'{\n  "other": "y",\n  "value": "x"\n}\n'),
        ({"value": 5}, b'{\n  "value": 5\n}\n'),
        ({"value": "aGk=", "encoding": "hex"}, b'{\n  "encoding": "hex",\n  "value": "aGk="\n}\n'),
        (
            {"value": "not base64!", "encoding": "base64"},
            b'{\n  "encoding": "base64",\n  "value": "not base64!"\n}\n',
        ),
        ({}, b"{}\n"),
        (
            {"b": {"y": "2", "x": "1"}, "a": ["é", None, True]},
            (
                '{\n  "a": [\n    "é",\n    null,\n    true\n  ],\n  "b": {\n    "x": "1",\n    "y": "2"\n  }\n}\n'
            ).encode(),
        ),
        ({"k": "日本"}, '{\n  "k": "日本"\n}\n'.encode()),
        # Lone surrogates have no UTF-8 form: shown as JSON with the escape kept.
        ({"value": "\ud800"}, b'{\n  "value": "\\ud800"\n}\n'),
        ({"k": "a\udc00b"}, b'{\n  "k": "a\\udc00b"\n}\n'),
    ],
)
def test_render(value: Any, shown: bytes) -> None:
    assert render.render(value) == shown


def test_canonical_json_format() -> None:
    assert render.canonical_json({"z": "1", "a": {"c": "é", "b": "\n"}}) == (
        '{\n  "a": {\n    "b": "\\n",\n    "c": "é"\n  },\n  "z": "1"\n}\n'.encode()
    )
    assert render.canonical_json({}).endswith(b"}\n")
    assert not render.canonical_json({"a": "b"}).endswith(b"\n\n")


# ----- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "stored"),
    [
        (b"tok", {"value": "tok"}),
        (b"tok\n", {"value": "tok\n"}),
        (b"", {"value": ""}),
        (b"   ", {"value": "   "}),
        ("grüße".encode(), {"value": "grüße"}),
        (b'{"user": "u", "n": {"a": "b"}}', {"user": "u", "n": {"a": "b"}}),
        (b'  \n{"a": "b"}\n', {"a": "b"}),
        (b'{"a": "\\u00e9"}', {"a": "é"}),
        (b"[1, 2]", {"value": "[1, 2]"}),
        (b'"just a string"', {"value": '"just a string"'}),
        (b"42", {"value": "42"}),
        (b"{broken json", {"value": "{broken json"}),
        (b'{"a": NaN}', {"value": '{"a": NaN}'}),
        (b'{"a": Infinity}', {"value": '{"a": Infinity}'}),
        (b"\x00\x01", {"value": "\x00\x01"}),  # valid UTF-8 stays text
        (b"\xff\xfe\x00", {"value": base64.b64encode(b"\xff\xfe\x00").decode(), "encoding": "base64"}),
        (b"\xc3", {"value": "ww==", "encoding": "base64"}),
    ],
)
def test_parse(content: bytes, stored: dict[str, Any]) -> None:
    assert render.parse(content) == stored


@pytest.mark.parametrize(
    "content",
    [
        b"tok",
        b"tok\n",
        b"multi\nline\r\ntext\n\n",
        "ünïcødé 🔑\n".encode(),
        b"\xff\xd8\xff\xe0 JPEG-ish \x00\x00",
        bytes(range(256)),
        os.urandom(4096) + b"\xff",
        b"",
    ],
)
def test_write_then_read_round_trips_bytes(content: bytes) -> None:
    """What a write stores renders back to exactly the written bytes (text and binary)."""
    assert render.render(render.parse(content)) == content


@pytest.mark.parametrize(
    "value",
    [
        {"user": "app", "password": "p"},
        {"nested": {"deep": {"er": "x"}}, "list": ["a", 1, None]},
        {"value": "x", "other": "y"},
        {"unicode": "日本 🔑"},
        {"lone": "\ud800"},
    ],
)
def test_rendered_json_round_trips(value: dict[str, Any]) -> None:
    """Rule 3 files parse back to the same object, so editing a rendered JSON file round-trips."""
    shown = render.render(value)
    assert json.loads(shown) == value
    assert render.parse(shown) == value
    # An edit of one field, as an editor would save it.
    edited = json.loads(shown)
    edited["added"] = "new"
    assert render.parse(json.dumps(edited, indent=2).encode() + b"\n") == edited


def test_render_key() -> None:
    assert render.render_key("raw text\n") == b"raw text\n"
    assert render.render_key(5432) == b"5432\n"
    assert render.render_key({"b": "1", "a": "2"}) == b'{\n  "a": "2",\n  "b": "1"\n}\n'
    assert render.render_key(None) == b"null\n"
    assert render.render_key("\udc00") == b'"\\udc00"\n'


HEAD = "/".join(["s" * 60] * 4) + "/"

# ----- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "a/b/c",
        "db_password",
        "with space",
        "grüße/日本",
        "...",
        ".hidden",
        "a.b",
        "x" * 255,
        "é" * 127,  # 254 bytes
        HEAD + "e" * (256 - len(HEAD)),  # 256 characters
    ],
)
def test_valid_names(name: str) -> None:
    assert render.is_valid_name(name)
    render.check_new_name(name)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", InvalidName),
        ("/a", InvalidName),
        ("a/", InvalidName),
        ("a//b", InvalidName),
        (".", InvalidName),
        ("..", InvalidName),
        ("a/./b", InvalidName),
        ("a/../b", InvalidName),
        ("../escape", InvalidName),
        ("a\x00b", InvalidName),
        ("bad\udc80surrogate", InvalidName),
        ("x" * 256, NameTooLong),  # one segment of 256 bytes
        ("é" * 128, NameTooLong),  # 128 characters but 256 bytes
        ("a/" + "x" * 256, NameTooLong),
        (HEAD + "e" * (257 - len(HEAD)), NameTooLong),  # 257 characters, every segment short
    ],
)
def test_invalid_names(name: str, error: type[Exception]) -> None:
    assert not render.is_valid_name(name)
    with pytest.raises(error):
        render.check_new_name(name)


def test_limits() -> None:
    assert render.MAX_VALUE_BYTES == 1024 * 1024
    assert render.MAX_NAME_CHARS == 256
    assert render.MAX_SEGMENT_BYTES == 255
