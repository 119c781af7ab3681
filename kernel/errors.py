"""Errors raised by the shared kernel.

KernelError
├── ConfigurationError   a setting is missing or malformed
└── CryptoError
    └── InvalidPoint     a value is not a usable Curve25519 u-coordinate
"""


class KernelError(Exception):
    """Root of every error the kernel raises."""


class ConfigurationError(KernelError):
    """A setting is missing or malformed."""


class CryptoError(KernelError):
    """A cryptographic recipe could not be applied."""


class InvalidPoint(CryptoError):
    """A value is not a usable Curve25519 u-coordinate (wrong length, off-curve, small order)."""
