"""Errors raised by the node.

NodeError
├── InvalidIdentifier        an identifier cannot be normalized
│   ├── InvalidEmail
│   └── InvalidPhone
├── InvalidRow               a customer row breaks the import rules (reason in the message)
├── ImportSourceError        the input file itself cannot be read (format, encoding, mapping)
├── StoreError               the customer store cannot be opened or migrated
├── CustomerNotFound         no customer matches an external id, e-mail or phone
│   └── AmbiguousSubject     an e-mail or phone belongs to several customers
├── AgreementUnknown         the node holds no (or a conflicting) copy of an agreement
├── FlowRefused              the node will not take part in a flow (reason attached)
├── InvalidSegment           a segment definition breaks a rule (the message says which)
├── BudgetExhausted          a count would spend more than the agreement's privacy budget
├── SegmentUnknown           the node has no segment by that id
└── BrokerUnavailable        the broker cannot be reached or refused the request
"""


class NodeError(Exception):
    """Root of every error the node raises."""


class InvalidIdentifier(NodeError):
    """An identifier cannot be normalized; the message says why, without echoing the value."""


class InvalidEmail(InvalidIdentifier):
    """An e-mail address fails the syntax or domain (UTS-46) rules."""


class InvalidPhone(InvalidIdentifier):
    """A phone number cannot be read as a valid number in E.164."""


class InvalidRow(NodeError):
    """A customer row breaks the import rules."""


class ImportSourceError(NodeError):
    """The input file cannot be read at all (unknown format, bad encoding, bad mapping)."""


class StoreError(NodeError):
    """The customer store cannot be opened or migrated."""


class CustomerNotFound(NodeError):
    """No customer matches the external id, e-mail or phone given (never echoed)."""


class AmbiguousSubject(CustomerNotFound):
    """An e-mail or phone belongs to several customers: name one by external id."""


class AgreementUnknown(NodeError):
    """The node holds no copy of the agreement (or one with other terms)."""


class FlowRefused(NodeError):
    """The node refuses its part of a flow; ``reason`` is a FlowFailureReason name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerUnavailable(NodeError):
    """The broker cannot be reached, or refused the request (its message says why)."""


class InvalidSegment(NodeError):
    """A segment definition breaks a rule; the message says which."""


class SegmentUnknown(NodeError):
    """The node has no segment by that id (the message names it)."""


class BudgetExhausted(NodeError):
    """A count would exceed the agreement's lifetime privacy budget (``BUDGET_EXHAUSTED``)."""
