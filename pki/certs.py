"""Reading certificates: parsing PEM/DER safely, who a node certificate
names, whether that peer may still talk to us, and when to renew it.

Everything here may be handed bytes from the network, so every parse goes
through one choke point that turns whatever the `cryptography` library
raises on malformed input into a `CertError` with a readable message.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Collection
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from .errors import CertError, PeerRejected

ROLES: tuple[str, ...] = ("manager", "worker")

# Node ids end up as the CN and as a DNS name in the SAN (peers that check
# the hostname compare it with the node id), so they must be a DNS label.
NODE_ID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# Largest PEM/DER we parse: real node certificates and CSRs are < 2 KiB;
# the bound keeps a hostile client from making us parse megabytes.
MAX_INPUT = 64 * 1024

# What `cryptography` raises on malformed or unsupported input. Several are
# not ValueErrors (x509.InvalidVersion, found by the fuzz tests, is a bare
# Exception), hence the explicit list.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, OverflowError, IndexError, KeyError,
    UnsupportedAlgorithm, InvalidSignature,
    x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, x509.ExtensionNotFound,
)

CertLike = bytes | bytearray | memoryview | str | x509.Certificate


@dataclass(frozen=True)
class NodeIdentity:
    """Who a node certificate says its holder is (after TLS verified the chain)."""

    node_id: str
    role: str
    cluster_id: str
    not_after: dt.datetime


def _raw(data: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(data, str):
        try:
            raw = data.encode("ascii")  # PEM is ASCII; anything else is not ours
        except UnicodeEncodeError:
            raise CertError(f"{what}: PEM must be ASCII text") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise CertError(f"{what}: expected PEM/DER bytes or text, got {type(data).__name__}")
    if not raw.strip():
        raise CertError(f"{what}: empty input")
    if len(raw) > MAX_INPUT:
        raise CertError(f"{what}: {len(raw)} bytes is larger than the {MAX_INPUT}-byte limit")
    return raw


def _is_pem(raw: bytes) -> bool:
    return raw.lstrip().startswith(b"-----BEGIN")


def load_cert(data: CertLike) -> x509.Certificate:
    """A certificate from PEM or DER, or CertError."""
    if isinstance(data, x509.Certificate):
        return data
    raw = _raw(data, "certificate")
    try:
        if _is_pem(raw):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except PARSE_ERRORS as e:
        raise CertError(f"not a valid certificate ({'PEM' if _is_pem(raw) else 'DER'}): {e}") from None


def load_csr(data: bytes | bytearray | memoryview | str) -> x509.CertificateSigningRequest:
    """A certificate signing request from PEM or DER, or CertError. The
    signature is NOT checked here (RootCA.issue does that)."""
    raw = _raw(data, "certificate request")
    try:
        if _is_pem(raw):
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    except PARSE_ERRORS as e:
        raise CertError(f"not a valid certificate request ({'PEM' if _is_pem(raw) else 'DER'}): {e}") from None


def _single(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        # Two CNs would let a certificate mean different nodes to different readers.
        raise CertError(f"a node certificate has exactly one {label}, this one has {len(values)}")
    value = values[0].value
    if not isinstance(value, str):
        raise CertError(f"the certificate's {label} is not text")
    return value


def peer_identity(data: CertLike) -> NodeIdentity:
    """Who a peer certificate names: CN = node id, OU = role, O = cluster id.

    It does not verify the chain; call it on a certificate that TLS already
    verified against the cluster CA (`ssl_object.getpeercert(binary_form=True)`).
    """
    cert = load_cert(data)
    try:
        subject = cert.subject
        node_id = _single(subject, NameOID.COMMON_NAME, "common name (node id)")
        role = _single(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (role)")
        cluster_id = _single(subject, NameOID.ORGANIZATION_NAME, "organization (cluster id)")
        not_after = cert.not_valid_after_utc
    except PARSE_ERRORS as e:
        raise CertError(f"unreadable certificate subject: {e}") from None
    if not NODE_ID_RE.fullmatch(node_id):
        raise CertError(f"the certificate's node id {node_id[:70]!r} is not a valid node id")
    if role not in ROLES:
        raise CertError(f"the certificate's role {role[:20]!r} is not one of {', '.join(ROLES)}")
    return NodeIdentity(node_id, role, cluster_id, not_after)


def check_peer(identity: NodeIdentity, removed_node_ids: Collection[str],
               cluster_id: str | None = None) -> None:
    """Refuse a peer whose certificate is still cryptographically valid but
    who was removed from the cluster (certificates outlive removal, so this
    list is our revocation), or who belongs to another cluster."""
    if identity.node_id in removed_node_ids:
        raise PeerRejected(f"node {identity.node_id} was removed from the cluster; "
                           "it must join again with a token")
    if cluster_id is not None and identity.cluster_id != cluster_id:
        raise PeerRejected(f"node {identity.node_id} has a certificate of cluster "
                           f"{identity.cluster_id!r}, not of this cluster {cluster_id!r}")


def renewal_delay(cert: CertLike, now: dt.datetime | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds from `now` until the certificate should be renewed: a
    uniformly random point between 50% and 80% of its validity, counted from
    notBefore (randomised so a fleet issued at once does not renew at once;
    early enough that a few failed attempts still leave time). 0 if that
    point has passed. A naive `now` is taken as UTC."""
    c = load_cert(cert)
    start, end = c.not_valid_before_utc, c.not_valid_after_utc
    life = (end - start).total_seconds()
    if life <= 0:
        return 0.0
    fraction = (rng or random.Random()).uniform(0.5, 0.8)
    current = now or dt.datetime.now(dt.timezone.utc)
    if current.tzinfo is None:
        current = current.replace(tzinfo=dt.timezone.utc)
    # Float seconds, not start + timedelta: timedelta rounds to microseconds.
    return max(0.0, (start - current).total_seconds() + life * fraction)
