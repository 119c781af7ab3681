"""Errors raised by the broker.

BrokerError
├── BrokerStoreError        the broker's database cannot be opened or migrated
├── BrokerKeysMismatch      the key directory is not this broker's (another name or role)
├── UnknownNode             no node of that name is registered
├── UnknownAgreement        the broker holds no such agreement
├── UnknownFlow             the broker knows no such flow
├── UnknownRevocation       the broker relayed no such revocation
├── FlowConflict            a flow id is already used with other parameters
├── AgreementConflict       another agreement is already known under that id
├── RevocationConflict      a revocation id is already used with other content
├── NotAuthorized           the caller may not do this (not a party, not the requester…)
├── CatalogEntryInvalid     a catalog entry breaks a rule (e.g. a size that is no bucket)
├── RevocationInvalid       a revocation (of releases or of an agreement) does not fit
│   │                       its agreement, or its signature does not verify
│   └── AcknowledgementInvalid   a recipient's acknowledgement does not fit or verify
└── WitnessRefused          the broker will not witness a tree head
    ├── TreeHeadInvalid     the head is malformed or not signed by the node's key
    ├── LogShrank           the head is smaller than one witnessed before
    ├── LogInconsistent     the head does not extend the last witnessed one (other root,
    │                       missing or failing consistency proof)
    └── WitnessRace         another head of the same log was witnessed meanwhile
"""


class BrokerError(Exception):
    """Root of every error the broker raises."""


class BrokerStoreError(BrokerError):
    """The broker's database cannot be opened or migrated."""


class BrokerKeysMismatch(BrokerError):
    """The key directory is not this broker's: another name, or a node's keys."""


class UnknownNode(BrokerError):
    """No node of that name is registered."""


class UnknownAgreement(BrokerError):
    """The broker holds no such agreement."""


class UnknownFlow(BrokerError):
    """The broker knows no such flow."""


class UnknownRevocation(BrokerError):
    """The broker relayed no revocation with that id."""


class FlowConflict(BrokerError):
    """A flow id is already used with other parameters (ids are idempotency keys)."""


class AgreementConflict(BrokerError):
    """Another agreement (other canonical bytes) is already known under that id."""


class RevocationConflict(BrokerError):
    """A revocation id is already used with other content (ids are idempotency keys)."""


class NotAuthorized(BrokerError):
    """The caller may not do this."""


class CatalogEntryInvalid(BrokerError):
    """A catalog entry breaks a rule; the message says which."""


class RevocationInvalid(BrokerError):
    """A revocation does not fit its agreement, or its signature does not verify."""


class AcknowledgementInvalid(RevocationInvalid):
    """A recipient's acknowledgement does not fit its revocation, or does not verify."""


class WitnessRefused(BrokerError):
    """The broker will not witness a tree head; the subclass says why."""


class TreeHeadInvalid(WitnessRefused):
    """The head is malformed, or its signature does not verify under the node's key."""


class LogShrank(WitnessRefused):
    """The head covers fewer entries than a head of the same log witnessed before."""


class LogInconsistent(WitnessRefused):
    """The head does not extend the last witnessed head: its history was rewritten."""


class WitnessRace(WitnessRefused):
    """Another head of the same log was witnessed while this one was checked; send again."""
