"""The broker's key directory: created on first start, checked on every later one."""

from __future__ import annotations

from pathlib import Path

from broker.errors import BrokerKeysMismatch
from kernel.keys import IDENTITY_FILE, KeyStore


def open_broker_keys(path: Path, *, name: str) -> tuple[KeyStore, bool]:
    """The broker's keys in ``path`` and whether they were created just now.

    A directory without keys gets fresh ones (role "broker", this name); one with keys must
    be a broker's, of this name: a broker that signs under another name would start a
    second audit log and cosign with a key no node expects.
    """
    if not (path / IDENTITY_FILE).exists():
        return KeyStore.create(path, name=name, role="broker"), True
    keys = KeyStore.open(path)
    identity = keys.identity
    if identity.role != "broker":
        raise BrokerKeysMismatch(f"{path} holds a {identity.role}'s keys, not a broker's")
    if identity.name != name:
        raise BrokerKeysMismatch(
            f"the keys in {path} belong to broker {identity.name}, not {name}: pass "
            f"--name {identity.name}, or another --keys directory"
        )
    return keys, False
