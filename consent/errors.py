"""Errors raised by the consent ledger and audit log.

ConsentError
"""


class ConsentError(Exception):
    """Root of every error the consent package raises."""
