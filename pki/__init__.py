"""What managers and agents both need to trust each other: the cluster CA
(root certificate, node certificates, join tokens, peer identity and
revocation, renewal timing), mutual-TLS contexts, and the secret box.

Modules: `ca` (RootCA, issuing), `certs` (parsing, identity, renewal),
`tokens` (join tokens), `tls` (SSL contexts, a node's credentials),
`files` (reading CA files; writes use api.fsutil), `secretbox` (secrets at rest), `errors` (every
CA error is a CAError, itself a ValueError). Depends on `api` only.
"""

from api.fsutil import write_atomic

from .ca import NODE_VALIDITY, ROOT_VALIDITY, RootCA, make_key_and_csr
from .certs import ROLES, NodeIdentity, check_peer, load_cert, load_csr, peer_identity, renewal_delay
from .errors import CAError, CertError, PeerRejected, TokenError
from .tokens import (
    JoinToken,
    ca_digest,
    ca_matches,
    make_token,
    new_secret,
    parse_token,
    redact,
    secret_matches,
)

__all__ = [
    "CAError",
    "CertError",
    "JoinToken",
    "NODE_VALIDITY",
    "NodeIdentity",
    "PeerRejected",
    "ROLES",
    "ROOT_VALIDITY",
    "RootCA",
    "TokenError",
    "ca_digest",
    "ca_matches",
    "check_peer",
    "load_cert",
    "load_csr",
    "make_key_and_csr",
    "make_token",
    "new_secret",
    "parse_token",
    "peer_identity",
    "redact",
    "renewal_delay",
    "secret_matches",
    "write_atomic",
]
