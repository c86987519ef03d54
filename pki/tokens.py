"""Join tokens: `ORCHTKN-1-<CA digest>-<secret>`.

- `ORCHTKN` says what it is; `1` is the format version.
- The CA digest is the SHA-256 of the root certificate's DER encoding,
  written as 64 lowercase hex digits (fixed length, so a truncated paste is
  caught by the parser, not by a confusing pin mismatch). A joining node
  fetches the manager's CA certificate over an unverified connection and
  trusts it only if its digest matches: the token pins the CA.
- The secret is 128 bits from `secrets`, as 32 lowercase hex digits. The
  cluster keeps one secret per role (worker, manager); which one a token
  carries decides the role the node joins with. Rotating a role's secret
  makes every old token of that role useless.

Secrets are compared in constant time. A token is a credential: its repr and
str are redacted, error messages never quote its secret, and `redact()`
makes any string that might be a token safe to log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .certs import CertLike, load_cert
from .errors import CertError, TokenError

PREFIX = "ORCHTKN"
VERSION = "1"
DIGEST_LEN = 64
SECRET_BYTES = 16
SECRET_LEN = 2 * SECRET_BYTES
_MAX_LEN = 512  # a real token is 106 characters
_HEX = re.compile(r"[0-9a-f]*")
_SAFE_TO_ECHO = re.compile(r"[A-Za-z0-9]{1,8}")


def ca_digest(ca_cert: CertLike) -> str:
    """SHA-256 of the certificate's DER, 64 lowercase hex digits."""
    cert: x509.Certificate = load_cert(ca_cert)
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def new_secret() -> str:
    """A fresh join secret (128 bits); a new one is what rotation means."""
    return secrets.token_hex(SECRET_BYTES)


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str):
        raise TokenError(f"the secret must be a string, got {type(secret).__name__}")
    if len(secret) != SECRET_LEN:
        raise TokenError(f"the secret must be {SECRET_LEN} lowercase hex digits, got {len(secret)} characters")
    if not _HEX.fullmatch(secret):
        pos = next(i for i, ch in enumerate(secret) if ch not in "0123456789abcdef")
        # Never quote the character: it is part of a credential.
        raise TokenError(f"the secret must be lowercase hex digits (0-9a-f): character {pos + 1} is not")


def make_token(ca_cert_pem: CertLike, secret: str | None = None) -> str:
    """The join token for `secret` (a fresh one if None) under this CA."""
    if secret is None:
        secret = new_secret()
    _check_secret(secret)
    try:
        digest = ca_digest(ca_cert_pem)
    except CertError as e:
        raise CertError(f"cannot make a join token: the CA certificate: {e}") from None
    return f"{PREFIX}-{VERSION}-{digest}-{secret}"


@dataclass(frozen=True, eq=False, repr=False)
class JoinToken:
    """A parsed join token. eq=False: comparing tokens with == would compare
    secrets in variable time; use `secret_is` / `matches_ca`."""

    digest: str
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"JoinToken({self.redacted})"

    __str__ = __repr__

    @property
    def redacted(self) -> str:
        """Safe to log: prefix, version and the start of the CA digest."""
        return f"{PREFIX}-{VERSION}-{self.digest[:12]}...-<redacted>"

    def reveal(self) -> str:
        """The full token, for sending it to a manager (never for logs)."""
        return f"{PREFIX}-{VERSION}-{self.digest}-{self.secret}"

    def matches_ca(self, ca_cert_pem: CertLike) -> bool:
        """True if `ca_cert_pem` is the CA this token pins; False for any
        other or unreadable certificate."""
        try:
            actual = ca_digest(ca_cert_pem)
        except CertError:
            return False
        return hmac.compare_digest(self.digest.encode(), actual.encode())

    def secret_is(self, secret: str) -> bool:
        """Constant-time comparison with a role's current secret."""
        if not isinstance(secret, str):
            return False
        return hmac.compare_digest(self.secret.encode(), secret.encode())


def _shown(part: str) -> str:
    # Echo a token field back only if it is short and plain; a mangled
    # paste may put the secret where we expected something else.
    if not part:
        return "(empty)"
    return repr(part) if _SAFE_TO_ECHO.fullmatch(part) else f"({len(part)} characters)"


def parse_token(s: str) -> JoinToken:
    """Parse `ORCHTKN-1-<64 hex>-<32 hex>`; TokenError says which part is wrong."""
    if not isinstance(s, str):
        raise TokenError(f"a join token is a string, got {type(s).__name__}")
    s = s.strip()  # tolerate the newline a copy-paste brings along
    if not s:
        raise TokenError("the join token is empty")
    if len(s) > _MAX_LEN:
        raise TokenError(f"the join token is {len(s)} characters long; a valid one has "
                         f"{len(PREFIX) + len(VERSION) + DIGEST_LEN + SECRET_LEN + 3}")
    parts = s.split("-")
    if len(parts) != 4:
        raise TokenError(f"expected {PREFIX}-{VERSION}-<CA digest>-<secret>: 4 fields separated by '-', "
                         f"got {len(parts)}")
    prefix, version, digest, secret = parts
    if prefix != PREFIX:
        hint = " (that is a Docker Swarm token)" if prefix == "SWMTKN" else ""
        raise TokenError(f"a join token starts with {PREFIX}-, this one with {_shown(prefix)}{hint}")
    if version != VERSION:
        raise TokenError(f"unsupported token version {_shown(version)}: this node reads version {VERSION}")
    if len(digest) != DIGEST_LEN:
        raise TokenError(f"the CA digest must be {DIGEST_LEN} hex digits, got {len(digest)} characters "
                         "(was the token cut short?)")
    if not _HEX.fullmatch(digest):
        pos = next(i for i, ch in enumerate(digest) if ch not in "0123456789abcdef")
        raise TokenError(f"the CA digest must be lowercase hex digits (0-9a-f): "
                         f"character {pos + 1} is {digest[pos]!r}")
    _check_secret(secret)
    return JoinToken(digest, secret)


def _as_token(token: str | JoinToken) -> JoinToken:
    return token if isinstance(token, JoinToken) else parse_token(token)


def ca_matches(token: str | JoinToken, ca_cert_pem: CertLike) -> bool:
    """Does this token pin this CA certificate? (A joining node asks before
    trusting anything the manager says.) A malformed token raises TokenError."""
    return _as_token(token).matches_ca(ca_cert_pem)


def secret_matches(token: str | JoinToken, secret: str) -> bool:
    """Constant-time: does the token carry `secret`? Malformed: TokenError."""
    return _as_token(token).secret_is(secret)


def redact(token: str) -> str:
    """A form of `token` that is safe to log, whether or not it parses."""
    try:
        return _as_token(token).redacted
    except TokenError:
        return "<unparseable join token, redacted>"
