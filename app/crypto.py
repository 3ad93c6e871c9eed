"""Secrets at rest (api.md §4): envelope encryption with AES-256-GCM.

Each record gets a fresh 32-byte data key (DEK); the compact UTF-8 JSON plaintext is sealed
under the DEK, and the DEK under the key-encryption key (KEK, NOETL_ENCRYPTION_KEY). Nonces
are 12 random bytes prepended to each ciphertext; there is no associated data.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.settings import Settings

log = logging.getLogger(__name__)
ALG = "AES-256-GCM"
KID = "env:NOETL_ENCRYPTION_KEY"
KEY_FILE = "encryption.key"


class KeyConfigError(RuntimeError):
    """No usable key-encryption key: the server must not start."""


class DecryptFailed(Exception):
    """A sealed record that does not open with the configured key."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode_kek(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{source}: not valid base64") from None
    if len(key) != 32:
        raise KeyConfigError(f"{source}: must be base64 of exactly 32 bytes, got {len(key)}")
    return key


def load_kek(settings: Settings) -> bytes:
    """The KEK from NOETL_ENCRYPTION_KEY, or the dev key file when explicitly allowed."""
    if settings.encryption_key:
        return _decode_kek(settings.encryption_key, "NOETL_ENCRYPTION_KEY")
    if not settings.allow_insecure_default_key:
        raise KeyConfigError(
            "NOETL_ENCRYPTION_KEY is not set (base64 of 32 bytes); for development only, "
            "NOETL_ALLOW_INSECURE_DEFAULT_KEY=true uses a key file in NOETL_DATA_DIR"
        )
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker process created it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(_b64(os.urandom(32)))
    log.warning(
        "using the insecure default encryption key file; set NOETL_ENCRYPTION_KEY in production",
        extra={"key_file": str(path)},
    )
    return _decode_kek(path.read_text(), str(path))


def is_envelope(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("v") == 1
        and isinstance(value.get("ct"), str)
        and isinstance(value.get("dek"), dict)
    )


class Sealer:
    """Seals and opens records with one KEK; `kv` is stored so rotation can be added later."""

    def __init__(self, kek: bytes, key_version: str = "v1") -> None:
        self._kek = AESGCM(kek)
        self.key_version = key_version

    def seal(self, value: Any) -> str:
        plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        dek = AESGCM.generate_key(bit_length=256)
        nonce, dek_nonce = os.urandom(12), os.urandom(12)
        ciphertext = nonce + AESGCM(dek).encrypt(nonce, plaintext, None)
        wrapped = dek_nonce + self._kek.encrypt(dek_nonce, dek, None)
        envelope = {
            "v": 1,
            "alg": ALG,
            "ct": _b64(ciphertext),
            "dek": {"p": "local", "kid": KID, "kv": self.key_version, "ct": _b64(wrapped)},
        }
        return json.dumps(envelope, separators=(",", ":"))

    def open(self, stored: str) -> tuple[Any, bool]:
        """(value, legacy): legacy is True for plaintext JSON that must be re-sealed."""
        try:
            parsed = json.loads(stored)
        except ValueError:
            raise DecryptFailed("stored value is neither an envelope nor JSON") from None
        if not is_envelope(parsed):
            if isinstance(parsed, dict) and parsed.get("alg") == ALG:
                raise DecryptFailed("malformed envelope")
            return parsed, True
        try:
            wrapped = base64.b64decode(parsed["dek"]["ct"], validate=True)
            ciphertext = base64.b64decode(parsed["ct"], validate=True)
            dek = self._kek.decrypt(wrapped[:12], wrapped[12:], None)
            plaintext = AESGCM(dek).decrypt(ciphertext[:12], ciphertext[12:], None)
            return json.loads(plaintext), False
        except (InvalidTag, KeyError, TypeError, ValueError, binascii.Error):
            raise DecryptFailed("record does not open with the configured key") from None
