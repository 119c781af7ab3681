"""Errors raised by the broker.

BrokerError
"""


class BrokerError(Exception):
    """Root of every error the broker raises."""
