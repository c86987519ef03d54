"""The cluster CA: root certificate, node certificates, join tokens, mutual TLS."""

from .ca import (
    CAError,
    NodeIdentity,
    RootCA,
    check_peer,
    make_key_and_csr,
    peer_identity,
    renewal_delay,
)
from .tokens import JoinToken, TokenError, ca_digest, make_token, parse_token

__all__ = [
    "CAError",
    "JoinToken",
    "NodeIdentity",
    "RootCA",
    "TokenError",
    "ca_digest",
    "check_peer",
    "make_key_and_csr",
    "make_token",
    "parse_token",
    "peer_identity",
    "renewal_delay",
]
