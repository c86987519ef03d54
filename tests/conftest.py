"""Shared pytest fixtures, registered here so every test package can use them.

Keep this file small: it only imports fixtures defined in tests/fixtures/.
"""

from tests.fixtures.registry import (  # noqa: F401  (pytest discovers fixtures by name)
    basic_registry,
    counting_proxy,
    fake_registry,
    open_registry,
    registry_env,
    tls_registry,
    token_registry,
)
