"""The broker: registry, agreements, matching, flow orchestration, witness of tree heads.

Nothing is public yet; issue 4 builds the service.
"""

__all__: list[str] = []
