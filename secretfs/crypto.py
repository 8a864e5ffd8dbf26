"""The Archestra v1 envelope: HKDF-SHA256 key derivation and AES-256-GCM, as pure functions.

key  = HKDF-SHA256(ikm=secret UTF-8, salt="archestra-hkdf-salt-v1",
                   info="archestra-secret-encryption-v1", length=32)
form = {"__encrypted": "v1:<iv>:<tag>:<ciphertext>"}, each part base64url without padding,
       IV 12 random bytes, tag 16 bytes, no AAD, plaintext = compact JSON (JSON.stringify form).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secretfs.errors import IntegrityError

HKDF_SALT = b"archestra-hkdf-salt-v1"
HKDF_INFO = b"archestra-secret-encryption-v1"
ENVELOPE_KEY = "__encrypted"
VERSION_PREFIX = "v1:"
IV_LENGTH = 12
TAG_LENGTH = 16


def derive_key(secret: str) -> bytes:
    """The 32-byte AES key derived from the configured secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO)
    return hkdf.derive(secret.encode("utf-8"))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SURROGATE = re.compile("[\ud800-\udfff]")


def compact_json(value: Any) -> str:
    """JSON in JavaScript's JSON.stringify form: no spaces, non-ASCII kept.

    Lone surrogates (valid in JSON text as escapes, not encodable as UTF-8) stay escaped as
    JSON.stringify does it, so every value json.loads accepts can be encrypted.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_encrypted(value: Any) -> bool:
    """True iff value is an object whose "__encrypted" is a string starting "v1:"."""
    if not isinstance(value, dict):
        return False
    marker = value.get(ENVELOPE_KEY)
    return isinstance(marker, str) and marker.startswith(VERSION_PREFIX)


def encrypt(key: bytes, value: Any, *, iv: bytes | None = None) -> dict[str, str]:
    """Encrypt a JSON value into a v1 envelope (a fresh random IV unless one is given)."""
    nonce = os.urandom(IV_LENGTH) if iv is None else iv
    sealed = AESGCM(key).encrypt(nonce, compact_json(value).encode("utf-8"), None)
    ciphertext, tag = sealed[:-TAG_LENGTH], sealed[-TAG_LENGTH:]
    token = ":".join(("v1", b64url_encode(nonce), b64url_encode(tag), b64url_encode(ciphertext)))
    return {ENVELOPE_KEY: token}


def decrypt(key: bytes, envelope: Any) -> Any:
    """Decrypt a v1 envelope; raise IntegrityError (never with the value) when it does not verify."""
    if not is_encrypted(envelope):
        raise IntegrityError("not a v1 envelope")
    parts = envelope[ENVELOPE_KEY].split(":")
    if len(parts) != 4:
        raise IntegrityError("malformed v1 envelope")
    try:
        nonce, tag, ciphertext = (b64url_decode(p) for p in parts[1:])
    except (binascii.Error, ValueError):
        raise IntegrityError("malformed v1 envelope (bad base64url)") from None
    if len(nonce) != IV_LENGTH or len(tag) != TAG_LENGTH:
        raise IntegrityError("malformed v1 envelope (bad IV or tag length)")
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext + tag, None)
    except InvalidTag:
        raise IntegrityError("ciphertext failed authentication") from None
    try:
        return json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError("decrypted payload is not JSON") from None
