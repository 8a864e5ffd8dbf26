"""The Archestra v1 envelope, checked against values derived independently of secretfs.crypto.

The HKDF key comes from the `openssl kdf` command line; AES-256-GCM is rebuilt here step by step
from the AES block cipher (ECB, one block at a time), a hand-written GHASH and counter mode, and that
hand-written GCM is itself checked against the published test vector (GCM spec, test case 15).
"""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secretfs import crypto
from secretfs.errors import IntegrityError

SALT = "archestra-hkdf-salt-v1"
INFO = "archestra-secret-encryption-v1"


# ----- independent references ---------------------------------------------------------------------


def openssl_hkdf(secret: str) -> bytes:
    """HKDF-SHA256 by the openssl command line (the secret passed as hex, so any bytes work)."""
    result = subprocess.run(
        [
            "openssl",
            "kdf",
            "-keylen",
            "32",
            "-kdfopt",
            "digest:SHA256",
            "-kdfopt",
            f"hexkey:{secret.encode('utf-8').hex()}",
            "-kdfopt",
            f"salt:{SALT}",
            "-kdfopt",
            f"info:{INFO}",
            "-binary",
            "HKDF",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert len(result.stdout) == 32
    return result.stdout


def aes_block(key: bytes, block: bytes) -> bytes:
    """One AES block encryption (ECB on exactly one block is the raw block cipher)."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


R = 0xE1 << 120


def gf_mult(x: int, y: int) -> int:
    """Multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D, algorithm 1)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ R if v & 1 else v >> 1
    return z


def ghash(h: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    def blocks(data: bytes) -> list[bytes]:
        padded = data + b"\0" * (-len(data) % 16)
        return [padded[i : i + 16] for i in range(0, len(padded), 16)]

    hkey = int.from_bytes(h, "big")
    y = 0
    lengths = (len(aad) * 8).to_bytes(8, "big") + (len(ciphertext) * 8).to_bytes(8, "big")
    for block in [*blocks(aad), *blocks(ciphertext), lengths]:
        y = gf_mult(y ^ int.from_bytes(block, "big"), hkey)
    return y.to_bytes(16, "big")


def gcm_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """AES-GCM with a 96-bit IV and no AAD, from the block cipher: (ciphertext, tag)."""
    assert len(iv) == 12
    h = aes_block(key, b"\0" * 16)
    j0 = iv + (1).to_bytes(4, "big")
    out = bytearray()
    for index in range(0, len(plaintext), 16):
        counter = iv + ((2 + index // 16) % 2**32).to_bytes(4, "big")
        stream = aes_block(key, counter)
        chunk = plaintext[index : index + 16]
        out += bytes(a ^ b for a, b in zip(chunk, stream, strict=False))
    ciphertext = bytes(out)
    s = ghash(h, b"", ciphertext)
    tag = bytes(a ^ b for a, b in zip(aes_block(key, j0), s, strict=True))
    return ciphertext, tag


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_reference_gcm_matches_published_vector() -> None:
    # "The Galois/Counter Mode of Operation (GCM)", McGrew & Viega, test case 15 (AES-256, 96-bit IV).
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    plaintext = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
    )
    ciphertext, tag = gcm_encrypt(key, iv, plaintext)
    assert ciphertext.hex() == (
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
    )
    assert tag.hex() == "b094dac5d93471bdec1a502270e3cc6c"


def test_reference_hkdf_matches_rfc5869_shape() -> None:
    # Sanity check of the openssl invocation itself: deterministic, 32 bytes, input-sensitive.
    assert openssl_hkdf("a") == openssl_hkdf("a")
    assert openssl_hkdf("a") != openssl_hkdf("b")


# ----- key derivation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "hello",
        "a-long-random-looking-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "grüße 日本 🔑",
        "with:colons and spaces\tand tabs",
    ],
)
def test_derive_key_matches_openssl(secret: str) -> None:
    assert crypto.derive_key(secret) == openssl_hkdf(secret)


def test_derive_key_known_answer() -> None:
    # Pinned from `openssl kdf ... -kdfopt key:hello ... HKDF` (run by hand, and again above).
    expected = "990b6388a9ca10f2eedeef3776e03486dde20613f782b2a1d7a327f9d906e02c"
    assert crypto.derive_key("hello").hex() == expected
    assert openssl_hkdf("hello").hex() == expected


# ----- the envelope -------------------------------------------------------------------------------

FIXED_IV = bytes(range(12))

CASES: list[tuple[Any, str]] = [
    ({"value": "hunter2"}, '{"value":"hunter2"}'),
    ({"value": "grüße 日本 🔑"}, '{"value":"grüße 日本 🔑"}'),
    (
        {"user": "app", "nested": {"b": "2", "a": "1"}, "quote": 'say "hi"\n'},
        '{"user":"app","nested":{"b":"2","a":"1"},"quote":"say \\"hi\\"\\n"}',
    ),
    ({"ctl": "\x01\x1f\x7f/"}, '{"ctl":"\\u0001\\u001f\x7f/"}'),
    ({"sep": "\u2028\u2029"}, '{"sep":"\u2028\u2029"}'),
    ({"lone": "\ud800"}, '{"lone":"\\ud800"}'),
    ({"value": "x" * 100}, '{"value":"' + "x" * 100 + '"}'),
]


@pytest.mark.parametrize(("value", "stringified"), CASES)
def test_compact_json_is_json_stringify_form(value: Any, stringified: str) -> None:
    assert crypto.compact_json(value) == stringified


@pytest.mark.parametrize(("value", "stringified"), CASES)
def test_encrypt_known_answer_from_primitives(value: Any, stringified: str) -> None:
    secret = "known-answer-secret"
    key = openssl_hkdf(secret)
    ciphertext, tag = gcm_encrypt(key, FIXED_IV, stringified.encode("utf-8"))
    expected = {"__encrypted": f"v1:{b64url(FIXED_IV)}:{b64url(tag)}:{b64url(ciphertext)}"}

    envelope = crypto.encrypt(crypto.derive_key(secret), value, iv=FIXED_IV)
    assert envelope == expected
    # And the other way: a hand-built envelope decrypts to the value.
    assert crypto.decrypt(key, expected) == value


def test_envelope_shape_with_random_iv() -> None:
    key = openssl_hkdf("shape")
    first = crypto.encrypt(key, {"value": "same"})
    second = crypto.encrypt(key, {"value": "same"})
    assert list(first) == ["__encrypted"]
    assert first != second  # a fresh IV each time
    for envelope in (first, second):
        token = envelope["__encrypted"]
        version, iv, tag, ciphertext = token.split(":")
        assert version == "v1"
        for part in (iv, tag, ciphertext):
            assert "=" not in part
            assert set(part) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert len(unb64url(iv)) == 12
        assert len(unb64url(tag)) == 16
        # Independently decrypted from primitives: recompute with the envelope's IV.
        expected_ct, expected_tag = gcm_encrypt(key, unb64url(iv), b'{"value":"same"}')
        assert unb64url(ciphertext) == expected_ct
        assert unb64url(tag) == expected_tag


def test_envelope_json_is_compact() -> None:
    # Stored as JSON by the SQL layer; the envelope itself is one key with a string.
    envelope = crypto.encrypt(openssl_hkdf("k"), {"value": "x"})
    assert json.loads(json.dumps(envelope)) == envelope


# ----- is_encrypted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"__encrypted": "v1:aaaa:bbbb:cccc"},
        {"__encrypted": "v1:"},
        {"__encrypted": "v1:x", "other": "key"},
    ],
)
def test_is_encrypted_true(value: Any) -> None:
    assert crypto.is_encrypted(value) is True


@pytest.mark.parametrize(
    "value",
    [
        {"__encrypted": "v2:aaaa:bbbb:cccc"},
        {"__encrypted": "V1:aaaa:bbbb:cccc"},
        {"__encrypted": " v1:aaaa"},
        {"__encrypted": "v1"},
        {"__encrypted": 5},
        {"__encrypted": None},
        {"__encrypted": ["v1:aaaa"]},
        {"__encrypted": {"v1": "x"}},
        {"encrypted": "v1:aaaa"},
        {"value": "v1:aaaa:bbbb:cccc"},
        {},
        "v1:aaaa:bbbb:cccc",
        '{"__encrypted": "v1:aaaa"}',
        ["v1:aaaa"],
        [{"__encrypted": "v1:aaaa"}],
        None,
        5,
    ],
)
def test_is_encrypted_false(value: Any) -> None:
    assert crypto.is_encrypted(value) is False


# ----- failures -----------------------------------------------------------------------------------

MARKER = "plaintext-marker-3b9d2f"


def _flip(part: str, bit: int = 0) -> str:
    raw = bytearray(unb64url(part))
    raw[bit // 8] ^= 1 << (bit % 8)
    return b64url(bytes(raw))


@pytest.mark.parametrize("which", [1, 2, 3])
@pytest.mark.parametrize("bit", [0, 7, 77])
def test_tampering_is_detected(which: int, bit: int) -> None:
    key = openssl_hkdf("tamper")
    envelope = crypto.encrypt(key, {"value": MARKER, "pad": "y" * 20})
    parts = envelope["__encrypted"].split(":")
    parts[which] = _flip(parts[which], bit % (len(unb64url(parts[which])) * 8))
    tampered = {"__encrypted": ":".join(parts)}
    with pytest.raises(IntegrityError) as info:
        crypto.decrypt(key, tampered)
    assert MARKER not in str(info.value)
    assert MARKER not in repr(info.value)
    assert info.value.__cause__ is None or MARKER not in str(info.value.__cause__)


def test_wrong_key_is_detected() -> None:
    envelope = crypto.encrypt(openssl_hkdf("right"), {"value": MARKER})
    with pytest.raises(IntegrityError) as info:
        crypto.decrypt(openssl_hkdf("wrong"), envelope)
    assert MARKER not in str(info.value)


@pytest.mark.parametrize(
    "token",
    [
        "v1:",
        "v1:aaaa",
        "v1:aaaa:bbbb",
        "v1:a:b:c:d",
        "v1:!!!!:bbbb:cccc",
        "v1:" + b64url(b"short") + ":" + b64url(bytes(16)) + ":" + b64url(b"x"),
        "v1:" + b64url(bytes(12)) + ":" + b64url(bytes(15)) + ":" + b64url(b"x"),
    ],
)
def test_malformed_envelope(token: str) -> None:
    with pytest.raises(IntegrityError):
        crypto.decrypt(openssl_hkdf("k"), {"__encrypted": token})


@pytest.mark.parametrize("value", [{"value": "plain"}, {"__encrypted": "v2:x"}, "v1:a:b:c"])
def test_decrypt_refuses_non_envelopes(value: Any) -> None:
    with pytest.raises(IntegrityError):
        crypto.decrypt(openssl_hkdf("k"), value)


def test_authentic_non_json_payload_is_an_integrity_error() -> None:
    key = openssl_hkdf("k")
    ciphertext, tag = gcm_encrypt(key, FIXED_IV, b"not json " + MARKER.encode())
    envelope = {"__encrypted": f"v1:{b64url(FIXED_IV)}:{b64url(tag)}:{b64url(ciphertext)}"}
    with pytest.raises(IntegrityError) as info:
        crypto.decrypt(key, envelope)
    assert MARKER not in str(info.value)


def test_base64url_helpers_have_no_padding() -> None:
    for n in range(0, 20):
        data = bytes(range(250, 250 - n, -1)) if n else b""
        text = crypto.b64url_encode(data)
        assert "=" not in text
        assert "+" not in text
        assert "/" not in text
        assert crypto.b64url_decode(text) == data
        assert text == b64url(data)
