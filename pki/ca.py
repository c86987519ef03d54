"""The cluster's root CA and the node certificates it issues.

The root key is ECDSA P-256 and the root certificate lives 20 years
(subject CN=orch-root-ca, O=<cluster id>). Node certificates (90 days by
default) carry CN = node id, OU = role (manager|worker), O = cluster id, a
DNS SAN with the node id, and both serverAuth and clientAuth usages: every
node is a TLS client and managers are servers too. Whatever a CSR asks for,
the CA decides the subject; the CSR only contributes its public key, and
only after its signature verifies (proof the requester holds the key).
"""

from __future__ import annotations

import datetime as dt
import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.fsutil import write_atomic

from .certs import NODE_ID_RE, PARSE_ERRORS, ROLES, load_cert, load_csr
from .errors import CAError, CertError
from .files import read_file
from .tokens import ca_digest

__all__ = ["NODE_VALIDITY", "ROOT_CN", "ROOT_VALIDITY", "RootCA", "check_node_id", "make_key_and_csr"]

ROOT_CN = "orch-root-ca"
ROOT_VALIDITY = dt.timedelta(days=365 * 20)
NODE_VALIDITY = dt.timedelta(days=90)
# Certificates start a little in the past so a peer whose clock lags ours
# does not reject a certificate issued a second ago as "not yet valid".
BACKDATE = dt.timedelta(minutes=5)

# Cluster ids go in the O attribute (at most 64 characters in X.509).
CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Curves every TLS stack we talk to supports; others (secp256k1, brainpool)
# would issue fine and then fail in handshakes far from the cause.
_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_RSA_BITS = (2048, 8192)  # below is weak; above costs a hostile client nothing and us a lot


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pub_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _as_timedelta(validity: dt.timedelta | float, what: str) -> dt.timedelta:
    if isinstance(validity, bool) or not isinstance(validity, (dt.timedelta, int, float)):
        raise CAError(f"{what} must be a timedelta or seconds, got {type(validity).__name__}")
    td = validity if isinstance(validity, dt.timedelta) else dt.timedelta(seconds=validity)
    if td <= dt.timedelta(0):
        raise CAError(f"{what} must be positive, got {td}")
    return td


def _check_key(pub: object) -> None:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if not isinstance(pub.curve, _CURVES):
            raise CertError(f"unsupported elliptic curve {pub.curve.name}: use P-256, P-384 or P-521")
    elif isinstance(pub, rsa.RSAPublicKey):
        if not _RSA_BITS[0] <= pub.key_size <= _RSA_BITS[1]:
            raise CertError(f"RSA keys must have {_RSA_BITS[0]} to {_RSA_BITS[1]} bits, this one has {pub.key_size}")
    else:
        raise CertError(f"unsupported key type {type(pub).__name__.lstrip('_')}: "
                        "use ECDSA (P-256, P-384, P-521) or RSA (2048+ bits)")


def check_node_id(node_id: str) -> None:
    if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
        raise CAError(f"node id {str(node_id)[:70]!r} is not valid: 1-63 letters, digits or '-', "
                      "not starting or ending with '-'")


class RootCA:
    """The root certificate and its private key; issues node certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    # -- creating, loading, saving -------------------------------------------

    @classmethod
    def create(cls, cluster_id: str, validity: dt.timedelta | float = ROOT_VALIDITY) -> RootCA:
        """A new root CA for the cluster `cluster_id` (done once, at `orch init`)."""
        if not isinstance(cluster_id, str) or not CLUSTER_ID_RE.fullmatch(cluster_id):
            raise CAError(f"cluster id {str(cluster_id)[:70]!r} is not valid: 1-64 letters, digits, '.', '_' or '-'")
        life = _as_timedelta(validity, "the root CA validity")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)])
        now = _now()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + life)
            # path_length=0: this CA signs node certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: str | bytes, key_pem: str | bytes) -> RootCA:
        """Load a root CA; refuses a non-CA certificate or a key that is not its key."""
        try:
            cert = load_cert(cert_pem)
        except CertError as e:
            raise CertError(f"the root CA certificate: {e}") from None
        try:
            key = serialization.load_pem_private_key(
                key_pem.encode() if isinstance(key_pem, str) else bytes(key_pem), password=None)
        except PARSE_ERRORS as e:
            raise CertError(f"the root CA key is not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"the root CA key must be ECDSA, not {type(key).__name__.lstrip('_')}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        except PARSE_ERRORS as e:
            raise CertError(f"the root CA certificate has unreadable extensions: {e}") from None
        if not is_ca:
            raise CertError("the root CA certificate is not a CA certificate (basicConstraints CA:TRUE missing)")
        try:
            cert_pub = _pub_der(cert.public_key())
        except PARSE_ERRORS as e:
            raise CertError(f"the root CA certificate's public key is unusable: {e}") from None
        if cert_pub != _pub_der(key.public_key()):
            # Certificates signed with the wrong key would fail every handshake.
            raise CertError("the root CA key does not belong to the root CA certificate")
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> RootCA:
        return cls.from_pem(read_file(cert_path, "root CA certificate"), read_file(key_path, "root CA key"))

    def save(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Write both PEMs atomically; the key file is mode 0600 from its first byte."""
        write_atomic(key_path, self.key_pem, 0o600)
        write_atomic(cert_path, self.cert_pem, 0o644)

    # -- properties ----------------------------------------------------------

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return _key_pem(self.key)

    @property
    def cluster_id(self) -> str:
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(attrs[0].value) if attrs else ""

    @property
    def digest(self) -> str:
        """The CA digest that join tokens carry (see tokens.ca_digest)."""
        return ca_digest(self.cert)

    # -- issuing -------------------------------------------------------------

    def issue(self, csr_pem: str | bytes, node_id: str, role: str,
              validity: dt.timedelta | float = NODE_VALIDITY, not_before: dt.datetime | None = None) -> str:
        """A PEM node certificate for the key in `csr_pem`.

        `validity` is a timedelta or seconds; the certificate never outlives
        the root. `not_before` (default: now minus a few minutes of clock
        skew) exists for renewal tests and for deliberately expired test
        certificates.
        """
        check_node_id(node_id)
        if role not in ROLES:
            raise CAError(f"role must be one of {', '.join(ROLES)}, got {str(role)[:20]!r}")
        life = _as_timedelta(validity, "the certificate validity")
        csr = load_csr(csr_pem)
        try:
            pub = csr.public_key()
        except PARSE_ERRORS as e:
            raise CertError(f"unsupported or malformed key in the certificate request: {e}") from None
        _check_key(pub)
        try:
            valid = csr.is_signature_valid
        except PARSE_ERRORS:
            valid = False
        if not valid:
            raise CertError("the certificate request's signature does not verify "
                            "(it was altered, or not signed with the key it carries)")
        start = not_before if not_before is not None else _now() - BACKDATE
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
        end = min(start + life, self.cert.not_valid_after_utc)
        if end <= start:
            raise CAError("the root CA expires before the requested certificate would start")
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_id),
        ])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True,
                                         # RSA key transport in TLS 1.2 needs keyEncipherment.
                                         key_encipherment=isinstance(pub, rsa.RSAPublicKey),
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)  # type: ignore[arg-type]
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_key_and_csr(node_id: str = "node") -> tuple[str, str]:
    """A new P-256 private key (PKCS#8 PEM) and a CSR for it. The CSR's CN
    is only a hint (a joining node does not know its id yet); the CA sets
    the real subject."""
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 64:
        raise CAError("the CSR's name must be 1-64 characters")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(key, hashes.SHA256()))
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()
