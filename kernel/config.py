"""Configuration defaults and the environment variables behind every CLI flag.

Settings are built once in ``main()`` (the CLI) and passed down; nothing here reads the
environment at import time.
"""

from __future__ import annotations

import phonenumbers

from kernel.errors import ConfigurationError

ENV_DB_URL = "ACCORD_DB_URL"
ENV_DEFAULT_REGION = "ACCORD_DEFAULT_REGION"
ENV_KEYS_DIR = "ACCORD_KEYS_DIR"
DEFAULT_DB_URL = "accord-node.db"
DEFAULT_REGION = "GB"
DEFAULT_KEYS_DIR = "accord-keys"


def region_code(value: str) -> str:
    """A node's default phone region: an ISO 3166 alpha-2 code phonenumbers knows."""
    code = value.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"default region {value!r} is not an ISO 3166 alpha-2 code known to phonenumbers"
        )
    return code
