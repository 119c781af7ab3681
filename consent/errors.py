"""Errors raised by the consent ledger and audit log.

ConsentError
└── ProofError   a Merkle inclusion or consistency proof does not verify
"""


class ConsentError(Exception):
    """Root of every error the consent package raises."""


class ProofError(ConsentError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2).

    Raised for every failure of a verifier: malformed arguments, proof of the wrong
    length, index or sizes out of range, a hash that is not 32 bytes, or a root mismatch.
    The message names what failed; it holds only public values (sizes, indices, hashes).
    """
