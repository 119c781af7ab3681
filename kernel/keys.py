"""A party's key directory: identity, Ed25519 signing key, blinding master secret, HPKE key.

Created once by ``accord node init`` (or ``accord broker init``) and read by every command
that signs, blinds or decrypts. Layout::

    identity.json   name, role, creation time, public keys (safe to publish)
    signing.pem     Ed25519 private key, PKCS#8 PEM           (mode 0600)
    master.key      32 random bytes: HKDF master for blinding  (mode 0600)
    hpke.key        32 bytes: X25519 private key for HPKE      (mode 0600)

Secrets are read when used and never logged; ``repr`` of every key object hides them.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from kernel.crypto import KEY_SIZE, HpkeKeyPair, SigningKey, key_id, random_bytes
from kernel.errors import ConfigurationError, CryptoError, KeyStoreError

__all__ = ["NAME_PATTERN", "KeyStore", "PartyIdentity", "check_party_name"]

NAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
IDENTITY_FILE: Final = "identity.json"
SIGNING_FILE: Final = "signing.pem"
MASTER_FILE: Final = "master.key"
HPKE_FILE: Final = "hpke.key"
ROLES: Final = ("node", "broker")


def check_party_name(name: str) -> str:
    """A node or broker name: lower-case letters, digits and inner hyphens, 1–63 long."""
    if not NAME_PATTERN.match(name):
        raise ConfigurationError(
            "a party name is 1-63 lower-case letters, digits and hyphens "
            "(not at either end), like solent-boats"
        )
    return name


@dataclass(frozen=True, slots=True)
class PartyIdentity:
    """What a party publishes about itself."""

    name: str
    role: str
    signing_public_key: bytes
    hpke_public_key: bytes
    created_at: str

    @property
    def signing_key_id(self) -> str:
        return key_id(self.signing_public_key)

    @property
    def origin(self) -> str:
        """The name of this party's audit log (in signed tree heads)."""
        return f"accord/{self.role}/{self.name}"

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "signing_public_key": base64.b64encode(self.signing_public_key).decode(),
            "signing_key_id": self.signing_key_id,
            "hpke_public_key": base64.b64encode(self.hpke_public_key).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> PartyIdentity:
        try:
            identity = cls(
                name=check_party_name(data["name"]),
                role=data["role"],
                signing_public_key=base64.b64decode(data["signing_public_key"], validate=True),
                hpke_public_key=base64.b64decode(data["hpke_public_key"], validate=True),
                created_at=data["created_at"],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyStoreError(f"{IDENTITY_FILE} is incomplete or malformed") from exc
        if identity.role not in ROLES or len(identity.signing_public_key) != KEY_SIZE:
            raise KeyStoreError(f"{IDENTITY_FILE} is incomplete or malformed")
        return identity


class KeyStore:
    """A key directory on disk; see the module docstring."""

    def __init__(self, path: Path, identity: PartyIdentity) -> None:
        self.path = path
        self.identity = identity

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r}, name={self.identity.name!r})"

    @classmethod
    def create(cls, path: Path, *, name: str, role: str = "node") -> KeyStore:
        """Generate fresh keys into ``path``; refuses to overwrite an existing identity."""
        check_party_name(name)
        if role not in ROLES:
            raise ConfigurationError(f"role must be one of {', '.join(ROLES)}")
        if (path / IDENTITY_FILE).exists():
            raise KeyStoreError(f"{path} already holds keys; refusing to overwrite them")
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        signing = SigningKey.generate()
        hpke_secret = random_bytes(KEY_SIZE)
        _write_secret(path / SIGNING_FILE, signing.to_pem())
        _write_secret(path / MASTER_FILE, random_bytes(KEY_SIZE))
        _write_secret(path / HPKE_FILE, hpke_secret)
        identity = PartyIdentity(
            name=name,
            role=role,
            signing_public_key=signing.public_key,
            hpke_public_key=HpkeKeyPair(hpke_secret).public_key,
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        # Written last: an interrupted init leaves no identity, so it can be re-run.
        (path / IDENTITY_FILE).write_text(
            json.dumps(identity.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        return cls(path, identity)

    @classmethod
    def open(cls, path: Path) -> KeyStore:
        try:
            data = json.loads((path / IDENTITY_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyStoreError(
                f"no keys in {path}: run `accord node init` first (or pass --keys)"
            ) from None
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read {path / IDENTITY_FILE}") from exc
        if not isinstance(data, dict):
            raise KeyStoreError(f"{IDENTITY_FILE} is incomplete or malformed")
        return cls(path, PartyIdentity.from_json(data))

    def signing_key(self) -> SigningKey:
        try:
            key = SigningKey.from_pem(_read_secret(self.path / SIGNING_FILE))
        except CryptoError as exc:
            raise KeyStoreError(f"{SIGNING_FILE} is not a PEM Ed25519 private key") from exc
        if key.public_key != self.identity.signing_public_key:
            raise KeyStoreError(f"{SIGNING_FILE} does not match the public key in {IDENTITY_FILE}")
        return key

    def master_secret(self) -> bytes:
        secret = _read_secret(self.path / MASTER_FILE)
        if len(secret) != KEY_SIZE:
            raise KeyStoreError(f"{MASTER_FILE} must hold {KEY_SIZE} bytes")
        return secret

    def hpke_key(self) -> HpkeKeyPair:
        try:
            pair = HpkeKeyPair(_read_secret(self.path / HPKE_FILE))
        except CryptoError as exc:
            raise KeyStoreError(f"{HPKE_FILE} must hold {KEY_SIZE} bytes") from exc
        if pair.public_key != self.identity.hpke_public_key:
            raise KeyStoreError(f"{HPKE_FILE} does not match the public key in {IDENTITY_FILE}")
        return pair


def _write_secret(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyStoreError(f"the key directory lacks {path.name}") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path.name}: {exc.strerror}") from exc
