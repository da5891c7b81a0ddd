"""Encryption at rest for what boxrun must read back (organisation secrets, webhook signing
secrets): Fernet from `cryptography` (AES-128-CBC + HMAC-SHA256, authenticated, timestamped).

The key comes from settings (`BOXRUN_SECRETS_KEY`): one Fernet key, or several separated by
commas to rotate (the first encrypts, every one decrypts; re-encrypt, then drop the old key).
In dev a placeholder key is derived from a fixed string so tests and a fresh checkout work; the
dev stack generates a real one into its secrets.json, and outside dev a placeholder refuses to
start (Settings.require_secrets)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from boxrun.errors import BoxrunError


class SecretBoxError(BoxrunError):
    """A sealed value that no configured key opens (wrong or rotated-away key, or tampering)."""


def _fernet(key: str) -> Fernet:
    try:
        return Fernet(key.strip().encode())
    except (ValueError, TypeError):  # not 32 url-safe base64 bytes: a passphrase (dev only)
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.strip().encode()).digest()))


class SecretBox:
    def __init__(self, keys: str) -> None:
        parts = [k for k in keys.split(",") if k.strip()]
        if not parts:
            raise ValueError("BOXRUN_SECRETS_KEY is empty")
        self._box = MultiFernet([_fernet(k) for k in parts])

    def seal(self, plaintext: str) -> bytes:
        return self._box.encrypt(plaintext.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._box.decrypt(bytes(sealed)).decode()
        except InvalidToken:
            raise SecretBoxError("a stored secret cannot be decrypted with BOXRUN_SECRETS_KEY (key changed?)") from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()
