"""HTTP client for the daemon's APIs, used by the CLI.

The CLI talks to the local daemon over its root-only unix socket by default,
or to a manager's TCP address given with `--host` / `ORCH_HOST`.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import http.client
import socket
import urllib.parse

DEFAULT_SOCKET = "/run/orch/orch.sock"


class APIError(Exception):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ConnectError(Exception):
    pass


@dataclass
class Endpoint:
    host: str | None = None  # "host:port" or "http(s)://host:port"
    socket: str | None = None
    # Remote access to a cluster's managers is mutual TLS: a directory with
    # ca.crt, node.crt and node.key (a manager's <data dir>/cluster/certs).
    tls_dir: str | None = None

    @classmethod
    def from_env(cls, host: str | None, socket: str | None, tls_dir: str | None = None) -> Endpoint:
        host = host or os.environ.get("ORCH_HOST")
        socket = socket or os.environ.get("ORCH_SOCKET")
        tls_dir = tls_dir or os.environ.get("ORCH_TLS_DIR")
        if not host and not socket:
            socket = DEFAULT_SOCKET
        return cls(host, socket, tls_dir)

    def describe(self) -> str:
        return self.host if self.host else f"unix:{self.socket}"

    def base_url(self) -> str:
        if self.host:
            if "://" in self.host:
                return self.host
            return f"{'https' if self.tls_dir else 'http'}://{self.host}"
        return "http://localhost"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_dir:
            return None
        paths = {n: os.path.join(self.tls_dir, n) for n in ("ca.crt", "node.crt", "node.key")}
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise ConnectError(f"--tls-dir {self.tls_dir}: missing {', '.join(missing)}")
        ctx = ssl.create_default_context(cafile=paths["ca.crt"])
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # managers' certificates name node ids; the CA chain is what is checked
        try:
            ctx.load_cert_chain(paths["node.crt"], paths["node.key"])
        except (ssl.SSLError, OSError) as e:
            raise ConnectError(f"--tls-dir {self.tls_dir}: cannot load the certificate: {e}") from None
        return ctx

    def connector(self) -> Any:
        """An aiohttp connector (for streaming requests)."""
        import aiohttp

        if self.host:
            ctx = self.ssl_context()
            return aiohttp.TCPConnector(ssl=ctx) if ctx is not None else aiohttp.TCPConnector()
        assert self.socket is not None
        return aiohttp.UnixConnector(path=self.socket)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def request(ep: Endpoint, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One request/response with the standard library: a CLI command should
    not pay aiohttp's import time (streams use `cli.engine._stream`)."""
    conn: http.client.HTTPConnection
    if ep.host:
        u = urllib.parse.urlsplit(ep.base_url())
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname or "", u.port or 443, timeout=timeout,
                                               context=ep.ssl_context() or ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=timeout)
    else:
        assert ep.socket is not None
        conn = _UnixHTTPConnection(ep.socket, timeout)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        status = r.status
    except TimeoutError:
        raise ConnectError(f"the orch daemon at {ep.describe()} did not answer in {timeout:.0f}s") from None
    except (OSError, http.client.HTTPException) as e:
        raise ConnectError(f"cannot reach the orch daemon at {ep.describe()}: {e}") from None
    finally:
        conn.close()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    if status >= 400:
        msg = text
        if isinstance(parsed, dict) and "error" in parsed:
            err = parsed["error"]
            msg = err.get("message", text) if isinstance(err, dict) else str(err)
        raise APIError(status, msg, parsed)
    return parsed
