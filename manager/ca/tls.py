"""SSL contexts for mutual TLS between nodes (TLS 1.2 at least).

`ssl` loads certificates from files only, so the PEMs are written to a
private temporary directory just long enough to be loaded.
"""

from __future__ import annotations

import os
import ssl
import tempfile


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    with tempfile.TemporaryDirectory(prefix="orch-tls-") as d:
        os.chmod(d, 0o700)
        cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        with open(cp, "w") as f:
            f.write(cert_pem)
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cp, kp)


def server_context(cert_pem: str, key_pem: str, ca_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem)
    _load_chain(ctx, cert_pem, key_pem)
    return ctx


def client_context(cert_pem: str, key_pem: str, ca_pem: str) -> ssl.SSLContext:
    """Verifies the server against the cluster CA; check_hostname is on,
    so pass server_hostname=<the peer's node id> or turn it off and check
    the peer's identity after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem)
    _load_chain(ctx, cert_pem, key_pem)
    return ctx
