"""Errors raised by the consent ledger and audit log.

ConsentError
├── ProofError             a Merkle inclusion or consistency proof does not verify
├── UnknownPurpose         a purpose is not in the taxonomy
├── InvalidConsentEvent    a consent event breaks a rule (reason in the message)
├── EventConflict          an event id is already recorded with different content
├── SubjectNotFound        no consent subject (or customer) matches what was given
├── SubjectErased          the subject was erased; nothing more can be recorded for it
├── LedgerTampered         the audit log does not verify (the message names the entry)
├── TrustedHeadMismatch    the log is not consistent with a head published earlier
│                          (also a LedgerTampered)
├── ProofBundleInvalid     an exported proof file does not check out
├── InvalidAgreement       agreement terms break a rule, or a signature does not verify
└── AgreementInactive      no flow may run under the agreement now (unsigned, not yet
                           valid, expired, revoked)
"""


class ConsentError(Exception):
    """Root of every error the consent package raises."""


class ProofError(ConsentError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2).

    Raised for every failure of a verifier: malformed arguments, proof of the wrong
    length, index or sizes out of range, a hash that is not 32 bytes, or a root mismatch.
    The message names what failed; it holds only public values (sizes, indices, hashes).
    """


class UnknownPurpose(ConsentError):
    """A purpose is not in the taxonomy."""


class InvalidConsentEvent(ConsentError):
    """A consent event breaks a rule; the message says which, never echoing identifiers."""


class EventConflict(ConsentError):
    """An event id is already recorded with different content (ids are idempotency keys)."""


class SubjectNotFound(ConsentError):
    """No consent subject or customer matches the external id, e-mail or phone given."""


class SubjectErased(ConsentError):
    """The subject was erased (GDPR 17); nothing more can be recorded for it."""


class LedgerTampered(ConsentError):
    """The audit log does not verify; the message names the first bad entry or head."""


class TrustedHeadMismatch(LedgerTampered):
    """The log is not consistent with a signed head published earlier (truncated or rewritten)."""


class ProofBundleInvalid(ConsentError):
    """An exported proof file does not check out; the message says which part failed."""


class InvalidAgreement(ConsentError):
    """Agreement terms break a rule, or a signature over them does not verify."""


class AgreementInactive(ConsentError):
    """No flow may run under the agreement now: unsigned, not yet valid, expired, revoked."""
