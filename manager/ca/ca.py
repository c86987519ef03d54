"""Root CA and node certificates.

The root key is ECDSA P-256 and the root certificate lives 20 years. Node
certificates (90 days by default) carry CN = node id, OU = role
(manager|worker), O = cluster id, a DNS SAN with the node id, and both
serverAuth and clientAuth usages: every node is a TLS client and managers
are servers too. Whatever a CSR asks for, the CA decides the subject; the
CSR only contributes its public key (after its signature is verified).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_VALIDITY = dt.timedelta(days=365 * 20)
NODE_VALIDITY = dt.timedelta(days=90)
ROLES = ("manager", "worker")


class CAError(ValueError):
    pass


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str
    cluster_id: str
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class RootCA:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, cluster_id: str, validity: dt.timedelta = ROOT_VALIDITY) -> RootCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orch-root-ca"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)])
        now = _now()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + validity)
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
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
            key = serialization.load_pem_private_key(key_pem.encode() if isinstance(key_pem, str) else key_pem,
                                                     password=None)
        except (ValueError, TypeError) as e:
            raise CAError(f"cannot load the CA: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError("the CA key is not an ECDSA key")
        return cls(cert, key)

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

    def issue(self, csr_pem: str | bytes, node_id: str, role: str,
              validity: dt.timedelta = NODE_VALIDITY, not_before: dt.datetime | None = None) -> str:
        if role not in ROLES:
            raise CAError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except (ValueError, TypeError) as e:
            raise CAError(f"not a PEM certificate request: {e}") from None
        try:
            pub = csr.public_key()
        except (ValueError, TypeError) as e:  # unsupported key algorithms
            raise CAError(f"unsupported key in the request: {e}") from None
        if isinstance(pub, ec.EllipticCurvePublicKey):
            if pub.curve.key_size < 256:
                raise CAError("ECDSA keys must be at least 256 bits")
        elif isinstance(pub, rsa.RSAPublicKey):
            if pub.key_size < 2048:
                raise CAError("RSA keys must be at least 2048 bits")
        else:
            raise CAError(f"unsupported key type {type(pub).__name__}: use ECDSA P-256 or RSA >= 2048")
        try:
            if not csr.is_signature_valid:
                raise CAError("the certificate request's signature does not verify")
        except InvalidSignature:
            raise CAError("the certificate request's signature does not verify") from None
        start = not_before or (_now() - dt.timedelta(minutes=5))
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_id or "orch"),
        ])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_key_and_csr(node_id: str) -> tuple[str, str]:
    """A new P-256 key (PEM) and a CSR for it (the CA sets the subject)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id or "node")]))
           .sign(key, hashes.SHA256()))
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(data: bytes | str | x509.Certificate) -> x509.Certificate:
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, TypeError) as e:
        raise CAError(f"not a certificate: {e}") from None


def peer_identity(data: bytes | str | x509.Certificate) -> NodeIdentity:
    """Who a (chain-verified) peer certificate names."""
    cert = load_cert(data)
    try:
        subj = cert.subject

        def one(oid: x509.ObjectIdentifier) -> str:
            attrs = subj.get_attributes_for_oid(oid)
            return str(attrs[0].value) if attrs else ""

        node_id, role, cluster = one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATIONAL_UNIT_NAME), \
            one(NameOID.ORGANIZATION_NAME)
        not_after = cert.not_valid_after_utc
    except (ValueError, TypeError) as e:  # malformed names
        raise CAError(f"unreadable certificate subject: {e}") from None
    if not node_id or role not in ROLES:
        raise CAError("not a node certificate of this cluster software (CN = node id, OU = role expected)")
    return NodeIdentity(node_id, role, cluster, not_after)


def check_peer(ident: NodeIdentity, removed_node_ids: set[str] | frozenset[str] | tuple[str, ...]) -> None:
    if ident.node_id in removed_node_ids:
        raise CAError(f"node {ident.node_id} was removed from the cluster")


def renewal_delay(cert: bytes | str | x509.Certificate, now: dt.datetime | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds until renewal: a uniformly random point between 50% and 80%
    of the validity, counted from notBefore (spreads a fleet's renewals)."""
    c = load_cert(cert)
    start, end = c.not_valid_before_utc, c.not_valid_after_utc
    life = (end - start).total_seconds()
    at = start + dt.timedelta(seconds=life * (rng or random).uniform(0.5, 0.8))
    return max(0.0, (at - (now or _now())).total_seconds())
