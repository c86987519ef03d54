"""SSL contexts for mutual TLS between nodes, and reading the peer's identity.

Both sides present a node certificate and verify the other's against the
cluster CA only (not the system trust store); TLS 1.2 is the minimum, with
forward-secret AEAD suites for 1.2 (1.3's suites are all such).

Hostname checking: node certificates name the node id (CN and a DNS SAN),
not an address, because nodes move and are dialled by IP. So
`client_context()` keeps `check_hostname` on by default and the caller
passes the peer's node id as the server name:
`session.get(url, server_hostname=node_id)` in aiohttp (also
`ws_connect(..., server_hostname=node_id)`). A caller that dials an address
before knowing who is there (a new node, a manager list) may pass
`check_hostname=False` and check `peer_identity_of()` after the handshake;
the chain is verified either way.

`NodeTLS` is a node's own credentials; `server_ssl`/`client_ssl` are the
contexts of the manager port and of every client that dials it (agent
sessions, Raft peers, joins), tuned for how nodes are addressed.

`ssl` loads a certificate chain from files only, so the PEMs are written to
a private temporary directory (0700, key file 0600) just long enough to be
loaded, and removed before returning.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass

from .certs import NodeIdentity, peer_identity
from .errors import CertError

# TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _text(pem: str | bytes, what: str) -> str:
    # PEM is ASCII; ssl raises TypeError (not SSLError) on anything else.
    if isinstance(pem, (bytes, bytearray)):
        text = bytes(pem).decode("ascii", errors="replace")
    elif isinstance(pem, str):
        text = pem
    else:
        raise CertError(f"the {what} must be PEM text, got {type(pem).__name__}")
    if not text.isascii() or "\ufffd" in text:
        raise CertError(f"the {what} is not PEM text (non-ASCII characters)")
    return text


def _load_chain(ctx: ssl.SSLContext, cert_pem: str | bytes, key_pem: str | bytes) -> None:
    cert, key = _text(cert_pem, "node certificate"), _text(key_pem, "node key")
    with tempfile.TemporaryDirectory(prefix="orch-tls-") as d:  # mkdtemp makes it 0700
        cp, kp = os.path.join(d, "node.crt"), os.path.join(d, "node.key")
        with open(cp, "w") as f:
            f.write(cert)
        with os.fdopen(os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key)
        try:
            ctx.load_cert_chain(cp, kp)
        except ssl.SSLError as e:
            raise CertError(f"cannot use the node certificate and key (unreadable, or the key is not the "
                            f"certificate's): {e.reason or e}") from None


def _base(protocol: int, cert_pem: str | bytes, key_pem: str | bytes, ca_pem: str | bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_ciphers(_TLS12_CIPHERS)
    try:
        ctx.load_verify_locations(cadata=_text(ca_pem, "CA certificate"))
    except (ssl.SSLError, ValueError) as e:
        raise CertError(f"cannot use the CA certificate: {e}") from None
    _load_chain(ctx, cert_pem, key_pem)
    return ctx


def server_context(cert_pem: str | bytes, key_pem: str | bytes, ca_pem: str | bytes) -> ssl.SSLContext:
    """For servers (aiohttp `web.TCPSite(..., ssl_context=ctx)`): presents the
    node certificate and requires a client certificate from the cluster CA."""
    return _base(ssl.PROTOCOL_TLS_SERVER, cert_pem, key_pem, ca_pem)


def client_context(cert_pem: str | bytes, key_pem: str | bytes, ca_pem: str | bytes, *,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """For clients (aiohttp `TCPConnector(ssl=ctx)`): presents the node
    certificate and verifies the server against the cluster CA. With
    `check_hostname` (the default) pass `server_hostname=<peer node id>`."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert_pem, key_pem, ca_pem)
    ctx.check_hostname = check_hostname
    return ctx


def peer_identity_of(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> NodeIdentity | None:
    """The identity in the peer's (already verified) certificate, or None if
    it sent none. E.g. `peer_identity_of(request.transport.get_extra_info("ssl_object"))`."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else peer_identity(der)


@dataclass
class NodeTLS:
    """This node's credentials (PEM)."""

    cert: str
    key: str
    ca: str


def parse_addr(addr: str, default_port: int = 4242) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in address {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def server_ssl(tls: NodeTLS) -> ssl.SSLContext:
    ctx = server_context(tls.cert, tls.key, tls.ca)
    # Joining nodes have no certificate yet; every other route requires one
    # (auth_middleware), so the handshake asks for it without insisting.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_ssl(tls: NodeTLS) -> ssl.SSLContext:
    ctx = client_context(tls.cert, tls.key, tls.ca)
    # Peers are dialled by address and their certificates name node ids:
    # the chain to our CA is what is checked; the server checks our role.
    ctx.check_hostname = False
    return ctx
