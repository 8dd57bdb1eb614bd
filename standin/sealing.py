"""Secrets in the stand-in's checkpoint, encrypted as Pulumi's passphrase secrets provider does.

The real engine never writes a secret value in clear: each one is stored as `ciphertext`,
AES-256-GCM under a key derived from the stack's passphrase (PBKDF2-SHA256, a per-stack salt),
and the checkpoint keeps the salt plus an encrypted check value, so a wrong passphrase is told
apart from a damaged file. The stand-in does the same, so its checkpoints hold neither the
agent key nor a token in clear.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from standin.wire import SECRET_SIG, SIG

ITERATIONS = 1_000_000
CHECK_VALUE = "pulumi"


class WrongPassphrase(Exception):
    """The checkpoint was sealed with another passphrase."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@functools.lru_cache(maxsize=32)
def _key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, ITERATIONS, 32)


class Crypter:
    def __init__(self, passphrase: str, salt: bytes) -> None:
        self.salt = salt
        self._aead = AESGCM(_key(passphrase, salt))

    @classmethod
    def for_checkpoint(cls, passphrase: str, state: dict[str, Any] | None) -> Crypter:
        """The checkpoint's crypter (checking the passphrase against it), or a new salt."""
        if not state:
            return cls(passphrase, os.urandom(16))
        crypter = cls(passphrase, base64.b64decode(state["salt"]))
        try:
            if crypter.decrypt(state["check"]) != CHECK_VALUE:
                raise WrongPassphrase
        except InvalidTag:
            raise WrongPassphrase from None
        return crypter

    def state(self) -> dict[str, Any]:
        return {"salt": _b64(self.salt), "check": self.encrypt(CHECK_VALUE)}

    def encrypt(self, value: Any) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(value).encode(), None)
        return f"v1:{_b64(nonce)}:{_b64(sealed)}"

    def decrypt(self, text: str) -> Any:
        _version, nonce, sealed = text.split(":")
        plain = self._aead.decrypt(base64.b64decode(nonce), base64.b64decode(sealed), None)
        return json.loads(plain)


def seal(value: Any, crypter: Crypter) -> Any:
    """Every secret's value replaced by its ciphertext, as in a Pulumi checkpoint."""
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG and "value" in value:
            return {SIG: SECRET_SIG, "ciphertext": crypter.encrypt(value["value"])}
        return {k: seal(v, crypter) for k, v in value.items()}
    if isinstance(value, list):
        return [seal(v, crypter) for v in value]
    return value


def unseal(value: Any, crypter: Crypter) -> Any:
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG and "ciphertext" in value:
            return {SIG: SECRET_SIG, "value": crypter.decrypt(value["ciphertext"])}
        return {k: unseal(v, crypter) for k, v in value.items()}
    if isinstance(value, list):
        return [unseal(v, crypter) for v in value]
    return value
