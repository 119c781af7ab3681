"""Errors raised by the broker.

BrokerError
├── BrokerStoreError    the broker's database cannot be opened or migrated
├── UnknownNode         no node of that name is registered
├── UnknownAgreement    the broker holds no such agreement
├── UnknownFlow         the broker knows no such flow
├── FlowConflict        a flow id is already used with other parameters
└── NotAuthorized       the caller may not do this (not a party, not the requester…)
"""


class BrokerError(Exception):
    """Root of every error the broker raises."""


class BrokerStoreError(BrokerError):
    """The broker's database cannot be opened or migrated."""


class UnknownNode(BrokerError):
    """No node of that name is registered."""


class UnknownAgreement(BrokerError):
    """The broker holds no such agreement."""


class UnknownFlow(BrokerError):
    """The broker knows no such flow."""


class FlowConflict(BrokerError):
    """A flow id is already used with other parameters (ids are idempotency keys)."""


class NotAuthorized(BrokerError):
    """The caller may not do this."""
