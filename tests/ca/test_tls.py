"""Real mutual-TLS handshakes on 127.0.0.1 between an aiohttp server and
aiohttp clients, with contexts from pki.tls."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from pki import CertError, PeerRejected, RootCA, check_peer, make_key_and_csr
from pki.tls import client_context, peer_identity_of, server_context

REMOVED = {"gone"}


@dataclass
class Pair:
    cert: str
    key: str


@dataclass
class PKI:
    ca: RootCA
    other_ca: RootCA
    pairs: dict[str, Pair] = field(default_factory=dict)

    def make(self, name: str, node: str, role: str, ca: RootCA | None = None, **kw: object) -> Pair:
        key, csr = make_key_and_csr(node)
        self.pairs[name] = Pair((ca or self.ca).issue(csr, node, role, **kw), key)  # type: ignore[arg-type]
        return self.pairs[name]

    def client(self, name: str, **kw: bool) -> ssl.SSLContext:
        p = self.pairs[name]
        return client_context(p.cert, p.key, self.ca.cert_pem, **kw)


@pytest.fixture(scope="module")
def pki() -> PKI:
    pki = PKI(RootCA.create("tlscluster"), RootCA.create("othercluster"))
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=100)
    pki.make("server", "mgr1", "manager")
    pki.make("worker", "w1", "worker")
    pki.make("removed", "gone", "worker")
    pki.make("foreign", "w1", "worker", ca=pki.other_ca)
    pki.make("expired", "w1", "worker", not_before=long_ago)  # 90 days from 100 days ago
    pki.make("foreign-server", "mgr1", "manager", ca=pki.other_ca)
    pki.make("expired-server", "mgr1", "manager", not_before=long_ago)
    return pki


@dataclass
class Server:
    port: int
    seen: list[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve(ctx: ssl.SSLContext) -> AsyncIterator[Server]:
    seen: list[str] = []

    def who(request: web.Request) -> str:
        ident = peer_identity_of(request.transport.get_extra_info("ssl_object"))  # type: ignore[union-attr]
        assert ident is not None  # CERT_REQUIRED: no handler runs without a client certificate
        try:
            check_peer(ident, REMOVED, cluster_id="tlscluster")
        except PeerRejected as e:
            raise web.HTTPForbidden(text=str(e)) from None
        version = request.transport.get_extra_info("ssl_object").version()  # type: ignore[union-attr]
        seen.append(f"{ident.node_id}/{ident.role}")
        return f"{ident.node_id}/{ident.role}/{version}"

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=who(request))

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(who(request))
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield Server(port, seen)
    finally:
        await runner.cleanup()


def server_ctx(pki: PKI, name: str = "server") -> ssl.SSLContext:
    p = pki.pairs[name]
    return server_context(p.cert, p.key, pki.ca.cert_pem)


async def get(url: str, ctx: ssl.SSLContext, server_hostname: str | None = "mgr1") -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as s:
        async with s.get(url + "/", server_hostname=server_hostname,
                         timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.status != 200:
                raise PermissionError(f"{r.status}: {await r.text()}")
            return await r.text()


async def test_mutual_tls_with_node_id_as_hostname(pki: PKI) -> None:
    async with serve(server_ctx(pki)) as srv:
        # The server sees the client's node id and role; TLS 1.2 or newer.
        text = await get(srv.url, pki.client("worker"))
        node, role, version = text.split("/")
        assert (node, role) == ("w1", "worker") and version in ("TLSv1.2", "TLSv1.3")
        # The client checks the server is the node it meant to reach.
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="mgr2"):
            await get(srv.url, pki.client("worker"), server_hostname="mgr2")
        # Addresses are not identities: dialling by IP with hostname checks on fails.
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="127.0.0.1"):
            await get(srv.url, pki.client("worker"), server_hostname=None)
        # The documented alternative: chain only, identity checked after the handshake.
        assert (await get(srv.url, pki.client("worker", check_hostname=False), server_hostname=None)
                ).startswith("w1/worker/")
        assert srv.seen == ["w1/worker", "w1/worker"]


async def test_websocket_over_mutual_tls(pki: PKI) -> None:
    async with serve(server_ctx(pki)) as srv:
        conn = aiohttp.TCPConnector(ssl=pki.client("worker"))
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.ws_connect(srv.url + "/ws", server_hostname="mgr1") as sock:
                assert (await sock.receive_str(timeout=5)).startswith("w1/worker/")
                await sock.send_str("ping")
                assert await sock.receive_str(timeout=5) == "echo:ping"


async def test_client_without_certificate_is_refused(pki: PKI) -> None:
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.load_verify_locations(cadata=pki.ca.cert_pem)  # trusts the server, presents nothing
    async with serve(server_ctx(pki)) as srv:
        with pytest.raises(aiohttp.ClientError):
            await get(srv.url, anon)
        assert srv.seen == []
        assert (await get(srv.url, pki.client("worker"))).startswith("w1/")  # the server is fine


async def test_certificates_of_another_ca_are_refused_both_ways(pki: PKI) -> None:
    async with serve(server_ctx(pki)) as srv:
        with pytest.raises(aiohttp.ClientError):
            await get(srv.url, pki.client("foreign"))
        assert srv.seen == []
    async with serve(server_ctx(pki, "foreign-server")) as srv:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="certificate verify failed"):
            await get(srv.url, pki.client("worker"))


async def test_expired_certificates_are_refused_both_ways(pki: PKI) -> None:
    async with serve(server_ctx(pki)) as srv:
        with pytest.raises(aiohttp.ClientError):
            await get(srv.url, pki.client("expired"))
        assert srv.seen == []
    async with serve(server_ctx(pki, "expired-server")) as srv:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="expired"):
            await get(srv.url, pki.client("worker"))


async def test_a_removed_node_is_refused_after_the_handshake(pki: PKI) -> None:
    # Its certificate still verifies; the removed-node list is the revocation.
    async with serve(server_ctx(pki)) as srv:
        with pytest.raises(PermissionError, match="403: node gone was removed from the cluster"):
            await get(srv.url, pki.client("removed"))
        assert srv.seen == []


def _tls11_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: that is the point
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 will not even offer TLS 1.1 at its default security level.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_tls_1_1_is_refused(pki: PKI) -> None:
    # Control: against a server that allows it, this client does speak TLS 1.1,
    # so the refusal below comes from our server's minimum, not from the client.
    weak = _tls11_only(server_ctx(pki))
    async with serve(weak) as srv:
        assert (await get(srv.url, _tls11_only(pki.client("worker")))).endswith("/TLSv1.1")
    async with serve(server_ctx(pki)) as srv:
        with pytest.raises(aiohttp.ClientError):
            await get(srv.url, _tls11_only(pki.client("worker")))
        assert srv.seen == []
        # TLS 1.2 exactly is still accepted.
        v12 = pki.client("worker")
        v12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert (await get(srv.url, v12)).endswith("/TLSv1.2")


def test_context_settings_and_bad_inputs(pki: PKI, tmp_path: os.PathLike[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Key material goes to a private temp dir that is gone afterwards.
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path))
    s, c = server_ctx(pki), pki.client("worker")
    assert os.listdir(tmp_path) == []
    for ctx in (s, c):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
    assert s.protocol == ssl.PROTOCOL_TLS_SERVER and c.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert c.check_hostname and not pki.client("worker", check_hostname=False).check_hostname
    # Only the cluster CA is trusted, not the system store.
    assert [dict(x[0] for x in ca["subject"])["commonName"] for ca in c.get_ca_certs()] == ["orch-root-ca"]
    w, other = pki.pairs["worker"], pki.pairs["server"]
    with pytest.raises(CertError, match="CA certificate"):
        server_context(w.cert, w.key, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError, match="node certificate and key"):
        client_context(w.cert, other.key, pki.ca.cert_pem)
    with pytest.raises(CertError, match="node key is not PEM text"):
        client_context(w.cert, b"\xff\xfe", pki.ca.cert_pem)
    assert os.listdir(tmp_path) == []


# -- the same handshakes in memory, to assert exactly why each side refuses -----
# (over sockets asyncio drops the server's reason and the client only sees a
# closed connection; ssl.MemoryBIO runs the real OpenSSL handshake without one)


def handshake(sctx: ssl.SSLContext, cctx: ssl.SSLContext,
              hostname: str = "mgr1") -> tuple[dict[str, ssl.SSLError], ssl.SSLObject]:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    cli = cctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    errors: dict[str, ssl.SSLError] = {}
    done: set[str] = set()
    for _ in range(6):  # a TLS 1.2/1.3 handshake takes at most 2 round trips
        for side, obj in (("client", cli), ("server", srv)):
            if side in errors or side in done:
                continue
            try:
                obj.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                errors[side] = e
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    if not errors:
        assert done == {"client", "server"}
    return errors, srv


def test_handshake_refusal_reasons(pki: PKI) -> None:
    errors, srv = handshake(server_ctx(pki), pki.client("worker"))
    assert errors == {}
    assert peer_identity_of(srv).node_id == "w1"  # type: ignore[union-attr]

    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.load_verify_locations(cadata=pki.ca.cert_pem)
    cases: list[tuple[str, ssl.SSLContext, ssl.SSLContext, str, str]] = [
        ("no client certificate", server_ctx(pki), anon, "server", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("client of another CA", server_ctx(pki), pki.client("foreign"), "server", "unable to get local issuer"),
        ("expired client", server_ctx(pki), pki.client("expired"), "server", "certificate has expired"),
        ("TLS 1.1 client", server_ctx(pki), _tls11_only(pki.client("worker")), "server", "UNSUPPORTED_PROTOCOL"),
        ("server of another CA", server_ctx(pki, "foreign-server"), pki.client("worker"), "client",
         "unable to get local issuer"),
        ("expired server", server_ctx(pki, "expired-server"), pki.client("worker"), "client",
         "certificate has expired"),
    ]
    for what, sctx, cctx, refuser, reason in cases:
        errors, _ = handshake(sctx, cctx)
        assert refuser in errors, what
        e = errors[refuser]
        assert reason in (e.reason or "") or reason in (getattr(e, "verify_message", "") or ""), (what, e)
    errors, _ = handshake(server_ctx(pki), pki.client("worker"), hostname="mgr2")
    assert "Hostname mismatch" in errors["client"].verify_message  # type: ignore[attr-defined]
