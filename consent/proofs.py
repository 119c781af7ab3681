"""Offline checking of a subject's proof file (``accord audit check-proof FILE``).

The file (written by ``accord audit proof``) bundles, for one subject, each audit-log
entry's canonical record and salt, its RFC 9162 inclusion proof, and the signed tree
head the proofs are against — the model is C2SP's ``tlog-proof``. Checking needs no
database and no network: only the file and the node's public key.

What a successful check establishes: every record is, unaltered, at its stated position
in the log that the node signed at that size. What it cannot: that the node shows every
party the same log — for that, compare the head with one the broker witnessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from consent.errors import LedgerTampered, ProofBundleInvalid, ProofError
from consent.merkle import leaf_hash, verify_inclusion
from consent.records import SignedTreeHead, leaf_data, record_commitment
from kernel.errors import CryptoError

__all__ = ["PROOF_FORMAT", "CheckedEntry", "check_subject_proof"]

PROOF_FORMAT: Final = "accord-subject-proof/1"


@dataclass(frozen=True, slots=True)
class CheckedEntry:
    leaf_index: int
    kind: str
    record: dict[str, Any]


def check_subject_proof(
    bundle: Mapping[str, Any], *, public_key: bytes
) -> tuple[SignedTreeHead, list[CheckedEntry]]:
    """Check every part of ``bundle``; raise ``ProofBundleInvalid`` naming what failed."""
    if bundle.get("format") != PROOF_FORMAT:
        raise ProofBundleInvalid(f"not an Accord subject proof (format {PROOF_FORMAT})")
    head = SignedTreeHead.from_json(bundle.get("tree_head") or {})
    if head.origin != bundle.get("origin"):
        raise ProofBundleInvalid("the tree head is of another log than the file names")
    try:
        head.verify(public_key)
    except LedgerTampered as exc:
        raise ProofBundleInvalid(f"the tree head's signature does not verify: {exc}") from exc
    entries = bundle.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ProofBundleInvalid("the file holds no entries")
    checked = []
    for position, entry in enumerate(entries):
        checked.append(_check_entry(position, entry, head))
    return head, checked


def _check_entry(position: int, entry: Any, head: SignedTreeHead) -> CheckedEntry:
    try:
        index = int(entry["leaf_index"])
        kind = str(entry["kind"])
        record = str(entry["record"]).encode("utf-8")
        salt = bytes.fromhex(entry["salt"])
        path = [bytes.fromhex(h) for h in entry["inclusion_proof"]]
        parsed = json.loads(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofBundleInvalid(f"entry #{position + 1} is incomplete or malformed") from exc
    if not isinstance(parsed, dict):
        raise ProofBundleInvalid(f"entry #{position + 1}: the record is not a JSON object")
    try:
        hashed = leaf_hash(leaf_data(kind, record_commitment(salt, index, record)))
        verify_inclusion(hashed, index, head.tree_size, path, head.root_hash)
    except ProofError as exc:
        raise ProofBundleInvalid(
            f"entry #{position + 1} (leaf {index}) is not in the signed log: {exc}"
        ) from exc
    except CryptoError as exc:  # a salt of the wrong length and the like
        raise ProofBundleInvalid(f"entry #{position + 1} is malformed: {exc}") from exc
    return CheckedEntry(index, kind, parsed)
