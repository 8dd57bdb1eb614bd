"""Secrets as Pulumi's passphrase secrets provider keeps them, for the engine and CLI stand-ins.

Traced to pulumi/pulumi `pkg/secrets/passphrase/manager.go` (NewPassphraseSecretsManager,
symmetricCrypterFromPhraseAndState) and `sdk/go/common/resource/config/crypt.go`
(NewSymmetricCrypterFromPassphrase, symmetricCrypter.EncryptValue): the key is PBKDF2-SHA256 of
the passphrase with 1,000,000 iterations over an 8-byte salt; a value is AES-256-GCM under it,
written `v1:<base64 nonce>:<base64 ciphertext>`. The provider's state, the `encryptionsalt` of
`Pulumi.<stack>.yaml` and `secrets_providers.state.salt` of the checkpoint alike, is
`v1:<base64 salt>:<the literal "pulumi" encrypted>`, so a wrong passphrase is told apart from a
damaged value. A checkpoint's secret holds its value JSON-encoded, then encrypted
(`pkg/resource/stack/deployment.go`); a config value is encrypted as it is written.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from citrus_deploy.standin.wire import SECRET_SIG, SIG

ITERATIONS = 1_000_000
SALT_BYTES = 8
CHECK_VALUE = "pulumi"
# ErrIncorrectPassphrase (pkg/secrets/passphrase/manager.go), the words of the CLI.
INCORRECT_PASSPHRASE = (
    "incorrect passphrase, please set PULUMI_CONFIG_PASSPHRASE to the correct passphrase or set "  # noqa: S105
    "PULUMI_CONFIG_PASSPHRASE_FILE to a file containing the passphrase"
)


class WrongPassphrase(Exception):
    """The state was sealed with another passphrase."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@functools.lru_cache(maxsize=32)
def _key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, ITERATIONS, 32)


class Crypter:
    def __init__(self, passphrase: str, salt: bytes, state: str | None = None) -> None:
        self.salt = salt
        self._aead = AESGCM(_key(passphrase, salt))
        self._state = state or f"v1:{_b64(salt)}:{self.encrypt_text(CHECK_VALUE)}"

    @classmethod
    def new(cls, passphrase: str) -> Crypter:
        """A new salt, as `stack init` (or a machine without the stack's file) makes one."""
        return cls(passphrase, os.urandom(SALT_BYTES))

    @classmethod
    def from_state(cls, passphrase: str, state: str) -> Crypter:
        """The crypter of a provider state `v1:<salt>:<check>`; WrongPassphrase unless the
        check value decrypts to "pulumi"."""
        try:
            version, salt, check = state.split(":", 2)
            if version != "v1":
                raise ValueError(version)
            crypter = cls(passphrase, base64.b64decode(salt, validate=True), state)
            if crypter.decrypt_text(check) != CHECK_VALUE:
                raise WrongPassphrase
        except (InvalidTag, ValueError, binascii.Error):
            raise WrongPassphrase from None
        return crypter

    def state(self) -> str:
        """The provider state, made once: the same text in the stack file and checkpoint."""
        return self._state

    def encrypt_text(self, text: str) -> str:
        nonce = os.urandom(12)
        return f"v1:{_b64(nonce)}:{_b64(self._aead.encrypt(nonce, text.encode(), None))}"

    def decrypt_text(self, text: str) -> str:
        version, nonce, sealed = text.split(":")
        if version != "v1":
            raise ValueError(f"unknown ciphertext version {version!r}")
        plain = self._aead.decrypt(base64.b64decode(nonce), base64.b64decode(sealed), None)
        return plain.decode()

    def encrypt(self, value: Any) -> str:
        return self.encrypt_text(json.dumps(value))

    def decrypt(self, text: str) -> Any:
        return json.loads(self.decrypt_text(text))


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
    """The inverse of seal; WrongPassphrase when a ciphertext does not open."""
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG and "ciphertext" in value:
            try:
                plain = crypter.decrypt(value["ciphertext"])
            except (InvalidTag, ValueError):
                raise WrongPassphrase from None
            return {SIG: SECRET_SIG, "value": plain}
        return {k: unseal(v, crypter) for k, v in value.items()}
    if isinstance(value, list):
        return [unseal(v, crypter) for v in value]
    return value
