"""Consent ledger, purpose taxonomy, policies and the Merkle audit log.

Nothing is public yet; issue 3 builds the ledger.
"""

__all__: list[str] = []
