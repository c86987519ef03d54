"""OCI distribution client (pull side), the asyncio/aiohttp shell around auth.py and manifest.py.

Owns the HTTP exchanges with registries: manifest GETs with the Accept list
of the four supported media types, blob GETs streamed into a verifying
`BlobWriter`, the auth handshake (anonymous, Basic, Bearer token flow driven
by `WWW-Authenticate`), transport policy (https with the system CAs plus
per-registry CAs from a docker-style certs.d directory; plain http only for
registries the operator lists as insecure), retries with exponential backoff
and jitter on connection errors, 429 and 5xx, manual redirects (credentials
never follow a redirect to another host), and sharing of identical
concurrent manifest and token requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from agent.images.auth import (
    Challenge,
    DockerAuthConfig,
    Token,
    load_docker_config,
    parse_token_response,
    parse_www_authenticate,
    repository_scope,
    token_url,
)
from agent.images.errors import (
    AuthError,
    BlobTruncated,
    BlobUnknown,
    ConfigError,
    DigestMismatch,
    MalformedManifest,
    ManifestUnknown,
    RegistryError,
    RegistryUnreachable,
    RepositoryUnknown,
)
from agent.images.manifest import ACCEPT_MANIFESTS, MAX_MANIFEST_BYTES, Descriptor, digest_of
from agent.images.reference import Reference
from agent.images.singleflight import SingleFlight
from agent.images.store import BlobWriter

log = logging.getLogger(__name__)

BlobProgress = Callable[[int, int], None]
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class RegistryConfig:
    """Operator settings for talking to registries."""

    # "host:port", "host" (any port) or a CIDR; these are spoken to over plain http.
    insecure_registries: tuple[str, ...] = ()
    # docker-style config.json with an "auths" section.
    auth_file: Path | None = None
    # docker-style certs.d: <certs_dir>/<host[:port]>/*.crt (CAs), *.cert + *.key (client cert).
    certs_dir: Path | None = None
    attempts: int = 4
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_concurrent_downloads: int = 3
    user_agent: str = "orch-agent/0.1"

    def is_insecure(self, host: str) -> bool:
        hostname, port = _split_host(host)
        for entry in self.insecure_registries:
            if entry == host or entry == hostname:
                return True
            try:
                net = ipaddress.ip_network(entry, strict=False)
                if "/" in entry and ipaddress.ip_address(hostname) in net:
                    return True
            except ValueError:
                continue
        return False


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        return name, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    content_type: str | None
    digest: str


def _error_detail(body: bytes) -> tuple[str | None, str]:
    """(first error code, human text) from a distribution error body."""
    try:
        obj = json.loads(body)
        errs = obj.get("errors") if isinstance(obj, dict) else None
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            code = errs[0].get("code")
            msg = errs[0].get("message") or ""
            return (code if isinstance(code, str) else None), str(msg)
    except ValueError:
        pass
    text = body[:200].decode("utf-8", "replace").strip()
    return None, text


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        if isinstance(err, OSError) and err.errno:
            return os.strerror(err.errno)
        return str(err) if err else str(e)
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    return str(e) or type(e).__name__


class RegistryClient:
    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self.credentials: DockerAuthConfig = load_docker_config(self.config.auth_file)
        self._session: aiohttp.ClientSession | None = None
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, str, str], Token] = {}
        self._token_flight: SingleFlight[Token] = SingleFlight()
        self._manifest_flight: SingleFlight[FetchedManifest] = SingleFlight()
        self._ssl: dict[str, ssl.SSLContext] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.connect_timeout, sock_read=self.config.read_timeout
                ),
                # Blobs must reach the digest check byte for byte.
                auto_decompress=False,
                headers={"User-Agent": self.config.user_agent, "Accept-Encoding": "identity"},
                trust_env=False,
            )
        return self._session

    # --- transport policy ---------------------------------------------------------

    def base_url(self, host: str) -> str:
        return ("http://" if self.config.is_insecure(host) else "https://") + host

    def _ssl_for(self, host: str) -> ssl.SSLContext:
        ctx = self._ssl.get(host)
        if ctx is not None:
            return ctx
        ctx = ssl.create_default_context()  # the system CA bundle
        certs = self.config.certs_dir
        if certs is not None:
            d = Path(certs) / host
            if d.is_dir():
                try:
                    for ca in sorted(d.glob("*.crt")):
                        ctx.load_verify_locations(cafile=str(ca))
                    for cert in sorted(d.glob("*.cert")):
                        key = cert.with_suffix(".key")
                        if not key.exists():
                            raise ConfigError(f"{cert}: client certificate without {key.name}")
                        ctx.load_cert_chain(str(cert), str(key))
                except (ssl.SSLError, OSError) as e:
                    raise ConfigError(f"{d}: cannot load certificates: {e}") from None
        self._ssl[host] = ctx
        return ctx

    async def _backoff(self, attempt: int, retry_after: str | None = None) -> None:
        delay = min(self.config.backoff_max, self.config.backoff_initial * (2 ** (attempt - 1)))
        delay *= random.uniform(0.5, 1.0)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self.config.backoff_max))
        await asyncio.sleep(delay)

    async def _send(self, method: str, url: str, headers: dict[str, str], host: str) -> aiohttp.ClientResponse:
        """One request, following redirects ourselves so Authorization never leaks to another origin."""
        session = self._get_session()
        origin = urlsplit(url)[:2]
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            kwargs: dict[str, Any] = {}
            if parts.scheme == "https":
                kwargs["ssl"] = self._ssl_for(parts.netloc)
            try:
                resp = await session.request(method, url, headers=headers, allow_redirects=False, **kwargs)
            except aiohttp.ClientConnectorCertificateError as e:
                raise RegistryUnreachable(parts.netloc, f"TLS certificate verification failed: {e.certificate_error}") from None
            except (aiohttp.ClientSSLError, ssl.SSLError) as e:
                hint = ""
                if parts.netloc == host:
                    hint = "; if this registry serves plain HTTP, add it to the insecure registries"
                raise RegistryUnreachable(parts.netloc, f"TLS handshake failed: {e}{hint}") from None
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                location = urljoin(url, resp.headers["Location"])
                resp.release()
                url = location
                if urlsplit(url)[:2] != origin:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                continue
            return resp
        raise RegistryError(f"registry {host}: more than {_MAX_REDIRECTS} redirects for {method} {url}")

    # --- auth ----------------------------------------------------------------------

    async def _auth_headers(self, host: str, repository: str) -> dict[str, str]:
        challenge = self._challenges.get(host)
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            creds = self.credentials.lookup(host)
            return {"Authorization": creds.basic_header()} if creds else {}
        if challenge.scheme == "bearer":
            token = await self._token(host, challenge, repository_scope(repository))
            return {"Authorization": f"Bearer {token.value}"}
        return {}

    def _token_key(self, host: str, challenge: Challenge, scope: str) -> tuple[str, str, str, str]:
        return (host, challenge.realm or "", challenge.params.get("service", ""), scope)

    async def _token(self, host: str, challenge: Challenge, scope: str) -> Token:
        key = self._token_key(host, challenge, scope)
        tok = self._tokens.get(key)
        if tok is not None and tok.valid():
            return tok

        async def fetch(_emit: Callable[[Any], None]) -> Token:
            tok = await self._fetch_token(host, challenge, scope)
            self._tokens[key] = tok
            return tok

        return await self._token_flight.do(key, fetch)

    async def _fetch_token(self, host: str, challenge: Challenge, scope: str) -> Token:
        url = token_url(challenge, scope)
        realm_parts = urlsplit(url)
        if realm_parts.scheme == "http" and not (
            self.config.is_insecure(host) or self.config.is_insecure(realm_parts.netloc)
        ):
            raise AuthError(
                f"token realm {challenge.realm} of registry {host} uses plain http; "
                "refusing (mark the registry or the realm host insecure to allow)"
            )
        creds = self.credentials.lookup(host)
        headers = {"Authorization": creds.basic_header()} if creds else {}
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._send("GET", url, headers, host)
                try:
                    body = await resp.read()
                finally:
                    resp.release()
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if attempt < self.config.attempts:
                    await self._backoff(attempt)
                    continue
                raise RegistryUnreachable(realm_parts.netloc, f"token server: {_describe(e)} (after {attempt} attempts)") from None
            if resp.status in _RETRY_STATUSES and attempt < self.config.attempts:
                await self._backoff(attempt, resp.headers.get("Retry-After"))
                continue
            if resp.status in (401, 403):
                who = f"user {creds.username!r}" if creds else "anonymous access"
                _, detail = _error_detail(body)
                raise AuthError(
                    f"token server {challenge.realm} rejected {who} for {scope} at {host}"
                    + (f": {detail}" if detail else ""),
                    status=resp.status,
                )
            if resp.status >= 400:
                _, detail = _error_detail(body)
                raise AuthError(f"token server {challenge.realm} answered HTTP {resp.status}: {detail}", status=resp.status)
            return parse_token_response(body, challenge.realm or url)

    # --- requests --------------------------------------------------------------------

    async def _open(self, method: str, host: str, path: str, repository: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send with auth and retries; returns a response with a non-error status or raises."""
        url = self.base_url(host) + path
        attempt = 0
        auth_tried = False
        while True:
            attempt += 1
            hdrs = dict(headers)
            hdrs.update(await self._auth_headers(host, repository))
            try:
                resp = await self._send(method, url, hdrs, host)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if attempt < self.config.attempts:
                    log.info("retrying %s %s after %s", method, url, _describe(e))
                    await self._backoff(attempt)
                    continue
                raise RegistryUnreachable(host, f"{_describe(e)} (after {attempt} attempts)") from None
            if resp.status == 401:
                body = await resp.read()
                resp.release()
                challenges = []
                for value in resp.headers.getall("WWW-Authenticate", []):
                    challenges.extend(parse_www_authenticate(value))
                usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
                # Prefer Bearer when a registry offers both.
                usable.sort(key=lambda c: c.scheme != "bearer")
                creds = self.credentials.lookup(host)
                if not auth_tried and usable:
                    auth_tried = True
                    attempt -= 1  # the auth round trip is not a failure
                    challenge = usable[0]
                    self._challenges[host] = challenge
                    if challenge.scheme == "basic" and creds is None:
                        raise AuthError(
                            f"registry {host} requires authentication and there are no credentials for it"
                            + (f" in {self.credentials.path}" if self.credentials.path else ""),
                            status=401,
                        )
                    if challenge.scheme == "bearer":
                        self._tokens.pop(self._token_key(host, challenge, repository_scope(repository)), None)
                    continue
                code, detail = _error_detail(body)
                if creds is not None and self._challenges.get(host, Challenge("")).scheme == "basic":
                    msg = f"authentication to registry {host} failed for user {creds.username!r}"
                elif creds is None:
                    msg = f"registry {host} denied anonymous access to {repository} (no credentials configured)"
                else:
                    msg = f"registry {host} denied user {creds.username!r} access to {repository}"
                raise AuthError(msg + (f": {detail}" if detail else ""), status=401, code=code)
            if resp.status in _RETRY_STATUSES:
                body = await resp.read()
                resp.release()
                if attempt < self.config.attempts:
                    log.info("retrying %s %s after HTTP %s", method, url, resp.status)
                    await self._backoff(attempt, resp.headers.get("Retry-After"))
                    continue
                code, detail = _error_detail(body)
                raise RegistryError(
                    f"registry {host}: {method} {path}: HTTP {resp.status} after {attempt} attempts"
                    + (f": {detail}" if detail else ""),
                    status=resp.status,
                    code=code,
                )
            if resp.status == 403:
                body = await resp.read()
                resp.release()
                code, detail = _error_detail(body)
                raise AuthError(f"registry {host} denied access to {repository}" + (f": {detail}" if detail else ""), status=403, code=code)
            return resp

    async def get_manifest(self, ref: Reference, reference: str | None = None) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest; identical concurrent requests share one GET."""
        reference = reference or ref.reference
        key = (ref.api_host, ref.repository, reference)

        async def run(_emit: Callable[[Any], None]) -> FetchedManifest:
            return await self._get_manifest(ref, reference)

        return await self._manifest_flight.do(key, run)

    async def _get_manifest(self, ref: Reference, reference: str) -> FetchedManifest:
        host = ref.api_host
        path = f"/v2/{ref.repository}/manifests/{reference}"
        where = f"manifest {ref.name}:{reference}" if not reference.startswith("sha") else f"manifest {ref.name}@{reference}"
        attempt = 0
        while True:
            attempt += 1
            resp = await self._open("GET", host, path, ref.repository, {"Accept": ", ".join(ACCEPT_MANIFESTS)})
            try:
                if resp.status == 404:
                    code, detail = _error_detail(await resp.read())
                    resp.release()
                    if code == "NAME_UNKNOWN" or await self._repository_missing(ref):
                        raise RepositoryUnknown(ref.registry, ref.repository, reference)
                    raise ManifestUnknown(ref.registry, ref.repository, reference)
                if resp.status >= 400:
                    code, detail = _error_detail(await resp.read())
                    raise RegistryError(
                        f"registry {host}: GET {path}: HTTP {resp.status} {code or ''}: {detail}".rstrip(": "),
                        status=resp.status,
                        code=code,
                    )
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise MalformedManifest(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes")
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if attempt < self.config.attempts:
                    await self._backoff(attempt)
                    continue
                raise RegistryUnreachable(host, f"reading {where}: {_describe(e)} (after {attempt} attempts)") from None
            finally:
                resp.release()
            content_type = resp.headers.get("Content-Type")
            data = bytes(body)
            if reference.startswith(("sha256:", "sha512:")):
                alg = reference.split(":", 1)[0]
                actual = digest_of(data, alg)
                if actual != reference:
                    raise DigestMismatch(where, reference, actual)
                return FetchedManifest(data, content_type, reference)
            digest = digest_of(data)
            header = resp.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != digest:
                raise DigestMismatch(f"{where} (Docker-Content-Digest header)", header, digest)
            return FetchedManifest(data, content_type, digest)

    async def _repository_missing(self, ref: Reference) -> bool:
        """Best effort, on the error path only: some registries (Distribution 2.x)
        answer MANIFEST_UNKNOWN for a repository that does not exist at all;
        tags/list tells the two apart with NAME_UNKNOWN."""
        try:
            resp = await self._open("GET", ref.api_host, f"/v2/{ref.repository}/tags/list?n=1", ref.repository, {})
            try:
                if resp.status != 404:
                    return False
                code, _ = _error_detail(await resp.read())
                return code == "NAME_UNKNOWN"
            finally:
                resp.release()
        except (RegistryError, aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def fetch_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        writer: BlobWriter,
        progress: BlobProgress | None = None,
    ) -> None:
        """Stream a blob into `writer`; retries restart it from zero.  The caller commits."""
        host = ref.api_host
        path = f"/v2/{ref.repository}/blobs/{desc.digest}"
        attempt = 0
        while True:
            attempt += 1
            resp = await self._open("GET", host, path, ref.repository, {})
            try:
                if resp.status == 404:
                    _, detail = _error_detail(await resp.read())
                    raise BlobUnknown(
                        f"registry {ref.registry} has no blob {desc.digest} in {ref.repository}"
                        + (f" ({detail})" if detail else ""),
                        status=404,
                        code="BLOB_UNKNOWN",
                    )
                if resp.status >= 400:
                    code, detail = _error_detail(await resp.read())
                    raise RegistryError(f"registry {host}: GET {path}: HTTP {resp.status}: {detail}", status=resp.status, code=code)
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    writer.write(chunk)
                    if progress is not None:
                        progress(writer.written, desc.size)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if attempt < self.config.attempts:
                    log.info("blob %s interrupted after %d bytes (%s); retrying", desc.digest, writer.written, _describe(e))
                    writer.reset()
                    await self._backoff(attempt)
                    continue
                if writer.written < desc.size:
                    raise BlobTruncated(f"blob {desc.digest} from {ref.registry}", desc.size, writer.written) from None
                raise RegistryUnreachable(host, f"reading blob {desc.digest}: {_describe(e)}") from None
            finally:
                resp.release()
            if writer.written < desc.size and attempt < self.config.attempts:
                # A clean end of stream that is still short: the server cut it; try again.
                writer.reset()
                await self._backoff(attempt)
                continue
            return
