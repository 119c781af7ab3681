"""The shared kernel: configuration, key handling, crypto recipes, telemetry, wire stubs.

It imports none of ``node``, ``broker``, ``consent`` or ``accord`` (the CLI); a test
enforces that (docs/architecture.md).
"""
