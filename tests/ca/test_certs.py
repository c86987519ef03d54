"""Root CA and node certificates: contents, lifetimes, CSR refusals, saving
and loading the CA on disk, peer identity and revocation, renewal timing."""

from __future__ import annotations

import datetime as dt
import os
import random
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import (
    CAError,
    CertError,
    PeerRejected,
    RootCA,
    check_peer,
    load_cert,
    make_key_and_csr,
    peer_identity,
    renewal_delay,
    write_atomic,
)

CLUSTER = "clusterid0000000000000000"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create(CLUSTER)


def issue(ca: RootCA, node: str = "node1", role: str = "worker", **kw: object) -> x509.Certificate:
    _, csr = make_key_and_csr(node)
    return load_cert(ca.issue(csr, node, role, **kw))  # type: ignore[arg-type]


def csr_for(key: object, cn: str = "n") -> str:
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, algo))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def name(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


# -- root CA --------------------------------------------------------------------


def test_root_certificate(ca: RootCA) -> None:
    root = ca.cert
    assert name(root, NameOID.COMMON_NAME) == ["orch-root-ca"]
    assert name(root, NameOID.ORGANIZATION_NAME) == [CLUSTER]
    assert ca.cluster_id == CLUSTER
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)  # self-signed with its own key
    pub = root.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=365 * 20) <= life <= dt.timedelta(days=365 * 20, minutes=10)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_root_ca_refuses_bad_cluster_ids() -> None:
    for bad in ("", "has space", "x" * 65, "-lead"):
        with pytest.raises(CAError, match="cluster id"):
            RootCA.create(bad)


def test_save_and_load_root_ca(ca: RootCA, tmp_path: os.PathLike[str]) -> None:
    crt, key = os.path.join(tmp_path, "ca.crt"), os.path.join(tmp_path, "ca.key")
    # A stale world-readable key file must end up 0600 too (replaced, not rewritten in place).
    with open(key, "w") as f:
        f.write("old")
    os.chmod(key, 0o644)
    ca.save(crt, key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(crt).st_mode) == 0o644  # the certificate is public
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key"]  # no temporary files left
    again = RootCA.load(crt, key)
    assert again.cert == ca.cert and again.key_pem == ca.key_pem
    # Certificates from the reloaded CA chain to the original root.
    issue(again, "n3").verify_directly_issued_by(ca.cert)
    with pytest.raises(CAError, match="ca.missing"):
        RootCA.load(os.path.join(tmp_path, "ca.missing"), key)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(tmp_path, "dir")
    os.mkdir(target)  # os.replace onto a directory fails after the temp file was written
    with pytest.raises(OSError):
        write_atomic(target, "data", 0o600)
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(target) == []
    with pytest.raises(TypeError):
        write_atomic(os.path.join(tmp_path, "f"), 5)  # type: ignore[arg-type]


def test_loading_a_ca_checks_the_pair(ca: RootCA) -> None:
    other = RootCA.create("other")
    with pytest.raises(CertError, match="does not belong"):
        RootCA.from_pem(ca.cert_pem, other.key_pem)
    node_key, node_csr = make_key_and_csr("n")
    with pytest.raises(CertError, match="not a CA certificate"):
        RootCA.from_pem(ca.issue(node_csr, "n", "worker"), node_key)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    with pytest.raises(CertError, match="must be ECDSA"):
        RootCA.from_pem(ca.cert_pem, rsa_pem)
    with pytest.raises(CertError, match="root CA key"):
        RootCA.from_pem(ca.cert_pem, "not a key")
    with pytest.raises(CertError, match="root CA certificate"):
        RootCA.from_pem("garbage", ca.key_pem)


# -- node certificates ----------------------------------------------------------


def test_node_certificate_contents(ca: RootCA) -> None:
    cert = issue(ca, "node1", "manager")
    assert name(cert, NameOID.COMMON_NAME) == ["node1"]
    assert name(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["manager"]
    assert name(cert, NameOID.ORGANIZATION_NAME) == [CLUSTER]
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1"]
    assert san.get_values_for_type(x509.IPAddress) == []  # identity is the node id, not an address
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Issued just now, backdated only a little for clock skew.
    age = dt.datetime.now(UTC) - cert.not_valid_before_utc
    assert dt.timedelta(0) < age < dt.timedelta(minutes=10)


def test_validity_is_configurable_and_capped_by_the_root(ca: RootCA) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=UTC)
    for validity in (dt.timedelta(hours=1), 3600):
        c = issue(ca, validity=validity, not_before=start)
        assert (c.not_valid_before_utc, c.not_valid_after_utc) == (start, start + dt.timedelta(hours=1))
    short = RootCA.create("short", validity=dt.timedelta(days=1))
    c = issue(short, validity=dt.timedelta(days=90))
    assert c.not_valid_after_utc == short.cert.not_valid_after_utc  # never outlives its issuer
    for bad in (dt.timedelta(0), -5, "90d"):
        with pytest.raises(CAError, match="validity"):
            issue(ca, validity=bad)


def test_the_ca_decides_the_subject(ca: RootCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i-want-to-be-admin"),
                                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "manager"),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("leader")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    cert = load_cert(ca.issue(csr.public_bytes(serialization.Encoding.PEM), "n2", "worker"))
    ident = peer_identity(cert)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("n2", "worker", CLUSTER)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["n2"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_issue_refuses_bad_requests(ca: RootCA) -> None:
    _, csr = make_key_and_csr("n")
    with pytest.raises(CAError, match="role must be one of manager, worker"):
        ca.issue(csr, "n", "admin")
    for bad in ("", "a b", "-x", "x-", "x" * 64, "ünï"):
        with pytest.raises(CAError, match="node id"):
            ca.issue(csr, bad, "worker")
    with pytest.raises(CertError, match="not a valid certificate request"):
        ca.issue("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "n", "worker")
    with pytest.raises(CertError, match="empty"):
        ca.issue("", "n", "worker")


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: RootCA) -> None:
    csr = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1()), "node-a").encode())
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"node-a") == 1
    # Same length, so the structure still parses; the signed content changed.
    tampered = der.replace(b"node-a", b"node-b")
    with pytest.raises(CertError, match="signature does not verify"):
        ca.issue(tampered, "n", "worker")
    ca.issue(der, "n", "worker")  # the untouched DER request is fine


def test_unsupported_key_types_are_refused(ca: RootCA) -> None:
    cases = [
        (ed25519.Ed25519PrivateKey.generate(), "unsupported key type Ed25519PublicKey"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA keys must have 2048"),
        (ec.generate_private_key(ec.SECP256K1()), "unsupported elliptic curve secp256k1"),
    ]
    for key, why in cases:
        with pytest.raises(CertError, match=why):
            ca.issue(csr_for(key), "n", "worker")
    # Supported alternatives still work.
    for key in (ec.generate_private_key(ec.SECP384R1()),
                rsa.generate_private_key(public_exponent=65537, key_size=2048)):
        peer_identity(ca.issue(csr_for(key), "n", "worker"))


# -- identity and revocation ----------------------------------------------------


def test_peer_identity_and_removed_nodes(ca: RootCA) -> None:
    cert = issue(ca, "node7", "manager")
    for form in (cert, cert.public_bytes(serialization.Encoding.DER),
                 cert.public_bytes(serialization.Encoding.PEM).decode()):
        ident = peer_identity(form)
        assert (ident.node_id, ident.role, ident.cluster_id) == ("node7", "manager", CLUSTER)
        assert ident.not_after == cert.not_valid_after_utc
    check_peer(ident, set())
    check_peer(ident, {"node8"}, cluster_id=CLUSTER)
    with pytest.raises(PeerRejected, match="node node7 was removed from the cluster"):
        check_peer(ident, {"node7"})
    with pytest.raises(PeerRejected, match="not of this cluster"):
        check_peer(ident, set(), cluster_id="another")


def test_peer_identity_refuses_non_node_certificates(ca: RootCA) -> None:
    with pytest.raises(CertError, match="exactly one organizational unit"):
        peer_identity(ca.cert)  # the root: no role
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.COMMON_NAME, "b"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "worker"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER)])
    now = dt.datetime.now(UTC)
    two_cns = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
               .sign(key, hashes.SHA256()))
    with pytest.raises(CertError, match="exactly one common name"):
        peer_identity(two_cns)
    with pytest.raises(CertError, match="not a valid certificate"):
        peer_identity(b"\x30\x03\x02\x01\x01")


# -- renewal --------------------------------------------------------------------


def test_renewal_between_half_and_80_percent(ca: RootCA) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=UTC)
    cert = issue(ca, not_before=start)
    life = 90 * 86400
    rng = random.Random(7)
    draws = [renewal_delay(cert, start, rng) for _ in range(500)]
    assert all(0.5 * life <= d <= 0.8 * life for d in draws)
    # Spread over the window, not bunched at one end.
    assert min(draws) < 0.53 * life and max(draws) > 0.77 * life
    # Measured from notBefore: ten days in, ten days less to wait.
    later = renewal_delay(cert, start + dt.timedelta(days=10), random.Random(1))
    assert later == pytest.approx(renewal_delay(cert, start, random.Random(1)) - 10 * 86400)
    # A naive `now` is UTC.
    assert renewal_delay(cert, start.replace(tzinfo=None), random.Random(1)) == \
        renewal_delay(cert, start, random.Random(1))
    # Past the window (or expired): renew now.
    assert renewal_delay(cert, start + dt.timedelta(days=73), rng) == 0.0
    assert renewal_delay(cert, start + dt.timedelta(days=400), rng) == 0.0
    # Default clock and randomness: a fresh 90-day certificate renews in 45..72 days.
    assert 44.9 * 86400 <= renewal_delay(issue(ca)) <= 72 * 86400
