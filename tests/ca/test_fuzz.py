"""Property tests: hostile tokens, certificates, CSRs and PEMs only ever
produce the CA's own errors (TokenError / CAError), never another type,
and renewal always falls inside [50%, 80%] of a certificate's life."""

from __future__ import annotations

import base64
import datetime as dt
import random
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki import (
    CAError,
    RootCA,
    TokenError,
    ca_digest,
    load_csr,
    make_key_and_csr,
    make_token,
    parse_token,
    peer_identity,
    renewal_delay,
)
from pki.tls import client_context, server_context

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UTC = dt.timezone.utc


class Material:
    """Valid inputs for the mutation strategies to start from."""

    def __init__(self) -> None:
        self.ca = RootCA.create("fuzz")
        self.key_pem, csr_pem = make_key_and_csr("n")
        self.csr_der = x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
        self.cert_pem = self.ca.issue(csr_pem, "n", "worker")
        self.cert_der = x509.load_pem_x509_certificate(self.cert_pem.encode()).public_bytes(serialization.Encoding.DER)
        self.token = make_token(self.ca.cert_pem)


M = Material()  # immutable after construction; hypothesis cannot use module fixtures in strategies


def pem(der: bytes, label: str) -> bytes:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few bytes replaced, inserted, deleted, or cut short:
    structurally almost valid, which reaches deeper into the parsers than
    random bytes do."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "replace" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def cert_inputs() -> st.SearchStrategy[bytes | str]:
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300),
        mutated(M.cert_der),
        mutated(M.cert_der).map(lambda d: pem(d, "CERTIFICATE")),
        st.text(max_size=200).map(lambda t: f"-----BEGIN CERTIFICATE-----\n{t}\n-----END CERTIFICATE-----\n"),
    )


def csr_inputs() -> st.SearchStrategy[bytes | str]:
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300),
        mutated(M.csr_der),
        mutated(M.csr_der).map(lambda d: pem(d, "CERTIFICATE REQUEST")),
    )


# -- tokens -----------------------------------------------------------------------

token_like = st.lists(
    st.one_of(st.sampled_from(["ORCHTKN", "1", "2", "", M.token.split("-")[2], M.token.split("-")[3]]),
              st.text(alphabet="0123456789abcdefABCDEF\n \u00e9\u0663", max_size=70)),
    min_size=1, max_size=6,
).map("-".join)


@FAST
@given(st.one_of(st.text(max_size=200), token_like))
def test_parse_token_only_raises_token_error(s: str) -> None:
    try:
        t = parse_token(s)
    except TokenError as e:
        assert str(e)  # always says something
        return
    assert t.reveal() == s.strip()
    assert t.secret not in repr(t)


@FAST
@given(st.one_of(st.binary(max_size=50), st.integers(), st.none()))
def test_parse_token_refuses_non_text(x: object) -> None:
    with pytest.raises(TokenError, match="a join token is a string"):
        parse_token(x)  # type: ignore[arg-type]


# -- certificates and CSRs ----------------------------------------------------------


@FAST
@given(cert_inputs())
def test_hostile_certificates_only_raise_ca_errors(data: bytes | str) -> None:
    try:
        ident = peer_identity(data)
    except CAError:
        pass
    else:
        assert ident.role in ("manager", "worker") and ident.node_id
    for f in (ca_digest, renewal_delay):
        try:
            f(data)
        except CAError:
            pass
    try:
        RootCA.from_pem(data, M.ca.key_pem)
    except CAError:
        pass


@FAST
@given(csr_inputs())
def test_hostile_csrs_only_raise_ca_errors(data: bytes | str) -> None:
    try:
        load_csr(data)
    except CAError:
        pass
    try:
        cert = M.ca.issue(data, "n", "worker")
    except CAError:
        return
    # Anything that gets through carries a key whose owner signed the request,
    # and the CA's own subject.
    assert peer_identity(cert).node_id == "n"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["cert", "key", "ca"]), cert_inputs())
def test_hostile_pems_for_tls_contexts_only_raise_ca_errors(which: str, data: bytes | str) -> None:
    args = {"cert": M.cert_pem, "key": M.key_pem, "ca": M.ca.cert_pem}
    args[which] = data  # type: ignore[assignment]
    for make in (server_context, client_context):
        try:
            make(args["cert"], args["key"], args["ca"])
        except CAError:
            pass


# -- renewal ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(life_s=st.integers(60, 10 * 365 * 86400), elapsed=st.floats(0, 1.2), seed=st.integers(0, 2**32))
def test_renewal_delay_is_always_in_the_window(life_s: int, elapsed: float, seed: int) -> None:
    start = dt.datetime(2031, 6, 1, tzinfo=UTC)
    _, csr = make_key_and_csr("n")
    cert = M.ca.issue(csr, "n", "worker", validity=life_s, not_before=start)
    now = start + dt.timedelta(seconds=life_s * elapsed)
    waited = (now - start).total_seconds()
    d = renewal_delay(cert, now, random.Random(seed))
    # The renewal point, measured from notBefore, is in [50%, 80%] of the life...
    lo, hi = 0.5 * life_s - waited, 0.8 * life_s - waited
    assert max(0.0, lo) - 1e-6 <= d <= max(0.0, hi) + 1e-6
    # ...and once it has passed, renew at once.
    if hi <= 0:
        assert d == 0.0
