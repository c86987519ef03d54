"""HTTP client for the daemon's APIs, used by the CLI.

The CLI talks to the local daemon over its root-only unix socket by default,
or to a manager's TCP address given with `--host` / `ORCH_HOST`.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

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

    def connector(self) -> aiohttp.BaseConnector:
        if self.host:
            ctx = self.ssl_context()
            return aiohttp.TCPConnector(ssl=ctx) if ctx is not None else aiohttp.TCPConnector()
        assert self.socket is not None
        return aiohttp.UnixConnector(path=self.socket)


async def _request(
    ep: Endpoint, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> Any:
    try:
        async with aiohttp.ClientSession(
            connector=ep.connector(), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as s:
            async with s.request(method, ep.base_url() + path, json=body) as r:
                text = await r.text()
                try:
                    data = json.loads(text) if text else None
                except ValueError:
                    data = text
                if r.status >= 400:
                    msg = text
                    if isinstance(data, dict) and "error" in data:
                        err = data["error"]
                        msg = err.get("message", text) if isinstance(err, dict) else str(err)
                    raise APIError(r.status, msg, data)
                return data
    except (aiohttp.ClientConnectionError, FileNotFoundError, PermissionError) as e:
        raise ConnectError(f"cannot reach the orch daemon at {ep.describe()}: {e}") from None
    except asyncio.TimeoutError:
        raise ConnectError(f"the orch daemon at {ep.describe()} did not answer in {timeout:.0f}s") from None


def request(ep: Endpoint, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    return asyncio.run(_request(ep, method, path, body, timeout))
