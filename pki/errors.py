"""Exception types of the cluster CA.

Everything in `pki` reports bad input with a subclass of `CAError`
(itself a `ValueError`, so callers that catch `ValueError` keep working):
hostile PEM/DER, CSRs and tokens must never surface as a library's own
exception type in a daemon that parses them from the network.
"""

from __future__ import annotations


class CAError(ValueError):
    """A CA operation was refused or its input was unusable."""


class CertError(CAError):
    """A certificate, key or certificate request could not be parsed or used."""


class PeerRejected(CAError):
    """A peer's certificate is valid but the peer may not talk to us
    (removed from the cluster, or a member of another cluster)."""


class TokenError(CAError):
    """A join token is malformed; the message says which part and why."""
