"""The cluster CA: tokens, certificates, identities, renewal timing, and
mutual TLS handshakes on loopback; property tests with hostile input."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.ca import (
    CAError,
    RootCA,
    TokenError,
    check_peer,
    make_key_and_csr,
    make_token,
    parse_token,
    peer_identity,
    renewal_delay,
)
from manager.ca.ca import load_cert
from manager.ca.tls import client_context, server_context


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create("clusterid0000000000000000")


def node_cert(ca: RootCA, node: str, role: str, **kw: object) -> tuple[str, str]:
    key, csr = make_key_and_csr(node)
    return ca.issue(csr, node, role, **kw), key  # type: ignore[arg-type]


def test_root_and_node_certificates(ca: RootCA) -> None:
    root = ca.cert
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert life >= dt.timedelta(days=365 * 20)
    cert, _ = node_cert(ca, "node1", "manager")
    ident = peer_identity(cert)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node1", "manager", "clusterid0000000000000000")
    c = load_cert(cert)
    assert dt.timedelta(days=89) < c.not_valid_after_utc - c.not_valid_before_utc <= dt.timedelta(days=90, hours=1)
    # The CA decides the subject, whatever the CSR asked for.
    key, csr = make_key_and_csr("i-want-to-be-admin")
    assert peer_identity(ca.issue(csr, "n2", "worker")).node_id == "n2"
    with pytest.raises(CAError, match="role"):
        ca.issue(csr, "n2", "admin")
    # A round trip through PEM keeps the CA usable.
    again = RootCA.from_pem(ca.cert_pem, ca.key_pem)
    assert peer_identity(again.issue(csr, "n3", "worker")).node_id == "n3"
    with pytest.raises(CAError, match="removed"):
        check_peer(ident, {"node1"})
    check_peer(ident, set())


def test_tokens_pin_the_ca_and_rotate(ca: RootCA) -> None:
    tok = make_token(ca.cert_pem, "0123456789abcdef0123456789abcdef")
    t = parse_token(tok)
    assert t.matches_ca(ca.cert_pem)
    assert not t.matches_ca(RootCA.create("other").cert_pem)
    assert t.secret_is("0123456789abcdef0123456789abcdef")
    assert not t.secret_is("f" * 32)  # a rotated secret no longer matches
    assert "0123456789abcdef" not in repr(t) and "redacted" in repr(t)
    for bad, why in (("", "4 parts"), ("SWMTKN-1-a-b", "ORCHTKN"), ("ORCHTKN-2-" + "a" * 64 + "-" + "b" * 32, "version"),
                     ("ORCHTKN-1-xyz-" + "b" * 32, "digest"), ("ORCHTKN-1-" + "a" * 64 + "-short", "secret")):
        with pytest.raises(TokenError, match=why):
            parse_token(bad)


def test_renewal_between_half_and_80_percent(ca: RootCA) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    cert, _ = node_cert(ca, "n", "worker", not_before=start)
    rng = random.Random(7)
    life = 90 * 86400
    for _ in range(200):
        d = renewal_delay(cert, start, rng)
        assert 0.5 * life <= d <= 0.8 * life
    assert renewal_delay(cert, start + dt.timedelta(days=80), rng) == 0.0  # overdue: now


async def _serve(ca: RootCA) -> tuple[web.AppRunner, int, list[str]]:
    seen: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        der = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)  # type: ignore[union-attr]
        ident = peer_identity(der)
        seen.append(f"{ident.node_id}/{ident.role}")
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    cert, key = node_cert(ca, "mgr", "manager")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, key, ca.cert_pem))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port, seen


async def _get(port: int, ctx: ssl.SSLContext) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(f"https://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.text()


async def test_mutual_tls_handshakes(ca: RootCA) -> None:
    runner, port, seen = await _serve(ca)
    try:
        cert, key = node_cert(ca, "w1", "worker")
        ctx = client_context(cert, key, ca.cert_pem)
        ctx.check_hostname = False
        assert await _get(port, ctx) == "hi" and seen == ["w1/worker"]
        # No client certificate: refused in the handshake.
        anon = ssl.create_default_context(cadata=ca.cert_pem)
        anon.check_hostname = False
        with pytest.raises(aiohttp.ClientError):
            await _get(port, anon)
        # A certificate of another CA: refused.
        other = RootCA.create("other")
        ocert, okey = node_cert(other, "evil", "manager")
        octx = client_context(ocert, okey, ca.cert_pem)
        octx.check_hostname = False
        with pytest.raises(aiohttp.ClientError):
            await _get(port, octx)
        # An expired certificate: refused.
        old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=100)
        ecert, ekey = node_cert(ca, "old", "worker", not_before=old)
        ectx = client_context(ecert, ekey, ca.cert_pem)
        ectx.check_hostname = False
        with pytest.raises(aiohttp.ClientError):
            await _get(port, ectx)
        # TLS 1.1 and older: refused.
        t11 = client_context(cert, key, ca.cert_pem)
        t11.check_hostname = False
        t11.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        t11.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _get(port, t11)
        assert seen == ["w1/worker"]
    finally:
        await runner.cleanup()
    await asyncio.sleep(0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_token_never_crashes(s: str) -> None:
    try:
        parse_token(s)
    except TokenError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda t: f"-----BEGIN CERTIFICATE-----\n{t}\n-----END CERTIFICATE-----\n".encode()),
))
def test_hostile_certificates_and_csrs(data: bytes) -> None:
    try:
        peer_identity(data)
    except CAError:
        pass
    ca = RootCA.create("c")
    try:
        ca.issue(data, "n", "worker")
    except CAError:
        pass


def test_csr_with_a_bad_signature_is_refused(ca: RootCA) -> None:
    _, csr = make_key_and_csr("n")
    b = bytearray(csr.encode())
    # Flip a bit inside the base64 body near the end (the signature).
    i = len(b) - 60
    b[i] = ord("A") if b[i] != ord("A") else ord("B")
    with pytest.raises(CAError):
        ca.issue(bytes(b), "n", "worker")
