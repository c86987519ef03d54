"""Join tokens: `ORCHTKN-1-<CA digest>-<secret>`.

The digest (sha256 of the root certificate's DER, 64 lowercase hex digits)
lets a joining node pin the CA before it trusts anything the manager says;
the secret (32 lowercase hex digits, 128 bits) says which role the node
joins with. Rotating a role's secret invalidates its old token. Secrets are
compared in constant time by the manager; a token's repr never shows them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

PREFIX = "ORCHTKN"
VERSION = "1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class TokenError(ValueError):
    pass


def ca_digest(ca_cert_pem: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    except ValueError as e:
        raise TokenError(f"not a PEM certificate: {e}") from None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class JoinToken:
    digest: str
    secret: str

    def __repr__(self) -> str:
        return f"JoinToken(digest={self.digest[:12]}..., secret=<redacted>)"

    __str__ = __repr__

    def matches_ca(self, ca_cert_pem: str) -> bool:
        try:
            return hmac.compare_digest(self.digest, ca_digest(ca_cert_pem))
        except TokenError:
            return False

    def secret_is(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret.encode(), secret.encode())


def make_token(ca_cert_pem: str, secret: str) -> str:
    if not _HEX32.match(secret):
        raise TokenError("a join secret is 32 lowercase hex digits")
    return f"{PREFIX}-{VERSION}-{ca_digest(ca_cert_pem)}-{secret}"


def parse_token(s: str) -> JoinToken:
    if not isinstance(s, str):
        raise TokenError("a join token is a string")
    s = s.strip()
    parts = s.split("-")
    if len(parts) != 4:
        raise TokenError(f"expected {PREFIX}-{VERSION}-<CA digest>-<secret> (4 parts separated by '-'), "
                         f"got {len(parts)} part(s)")
    prefix, version, digest, secret = parts
    if prefix != PREFIX:
        raise TokenError(f"must start with {PREFIX}- (is it a token of this cluster software?)")
    if version != VERSION:
        raise TokenError(f"unsupported token version {version[:8]!r} (this node knows {VERSION})")
    if not _HEX64.match(digest):
        raise TokenError("the CA digest must be 64 lowercase hex digits")
    if not _HEX32.match(secret):
        raise TokenError("the secret must be 32 lowercase hex digits")
    return JoinToken(digest, secret)
