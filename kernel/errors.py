"""Errors raised by the shared kernel.

KernelError
├── ConfigurationError   a setting is missing or malformed
├── CryptoError
│   ├── InvalidPoint       a value is not a usable Curve25519 u-coordinate
│   ├── SignatureInvalid   an Ed25519 signature does not verify
│   └── DecryptionFailed   an HPKE payload does not open (wrong key, context or data)
└── KeyStoreError          a node's key directory is missing, incomplete or unreadable
"""


class KernelError(Exception):
    """Root of every error the kernel raises."""


class ConfigurationError(KernelError):
    """A setting is missing or malformed."""


class CryptoError(KernelError):
    """A cryptographic recipe could not be applied."""


class InvalidPoint(CryptoError):
    """A value is not a usable Curve25519 u-coordinate (wrong length, off-curve, small order)."""


class SignatureInvalid(CryptoError):
    """An Ed25519 signature does not verify (malformed key or signature, or a mismatch)."""


class DecryptionFailed(CryptoError):
    """An HPKE payload does not open: wrong key, wrong context, or altered data."""


class UnknownHandle(CryptoError):
    """A handle came back that this node never issued for that set."""


class KeyStoreError(KernelError):
    """A node's key directory is missing, incomplete or unreadable."""
