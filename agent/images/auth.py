"""Registry authentication, sans-I/O: challenges, credentials, tokens.

Owns parsing of `WWW-Authenticate` (RFC 7235, including quoted commas and
escapes), reading credentials from a docker-style `config.json`, building the
token request for the Bearer flow of the distribution spec, and the token
cache.  The HTTP exchanges themselves live in `client.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from agent.images.errors import AuthError, ConfigError


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer", ...
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_SEPARATORS = frozenset(' \t,="')


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse one or more challenges from a WWW-Authenticate header value.

    `Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"`
    yields one challenge whose scope keeps its comma.  Several challenges may
    share one header (`Basic realm="x", Bearer realm="y"`).
    """
    challenges: list[Challenge] = []
    current: Challenge | None = None
    i, n = 0, len(value)

    def skip_ws(j: int) -> int:
        while j < n and value[j] in " \t":
            j += 1
        return j

    while i < n:
        i = skip_ws(i)
        if i < n and value[i] == ",":
            i += 1
            continue
        if i >= n:
            break
        start = i
        while i < n and value[i] not in _SEPARATORS:
            i += 1
        token = value[start:i]
        if not token:
            # Stray quote or '=' with no name before it: skip the character.
            i += 1
            continue
        j = skip_ws(i)
        if current is not None and j < n and value[j] == "=":
            j = skip_ws(j + 1)
            if j < n and value[j] == '"':
                j += 1
                buf: list[str] = []
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(value[j])
                    j += 1
                j += 1  # closing quote (or end of string for unterminated input)
                param = "".join(buf)
            else:
                vstart = j
                while j < n and value[j] not in " \t,":
                    j += 1
                param = value[vstart:j]
            current.params[token.lower()] = param
            i = j
        else:
            current = Challenge(token.lower(), {})
            challenges.append(current)
            i = j
    return challenges


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # never print passwords in logs or tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


def normalize_registry_key(key: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `http://h:5000/x` -> `h:5000`."""
    k = key.strip()
    if "://" in k:
        k = k.split("://", 1)[1]
    k = k.split("/", 1)[0].lower()
    if k in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return "docker.io"
    return k


@dataclass(frozen=True)
class DockerAuthConfig:
    """Credentials read from a docker `config.json` (`auths` section)."""

    path: Path | None
    entries: dict[str, Credentials]

    def lookup(self, registry: str) -> Credentials | None:
        return self.entries.get(normalize_registry_key(registry))


def parse_docker_config(text: str, path: Path | None = None) -> DockerAuthConfig:
    where = str(path) if path else "docker config"
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: top level must be an object")
    auths = obj.get("auths")
    if auths is None:
        auths = {}
    if not isinstance(auths, dict):
        raise ConfigError(f"{where}: 'auths' must be an object")
    entries: dict[str, Credentials] = {}
    for key, entry in auths.items():
        ewhere = f"{where}: auths[{key!r}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{ewhere} must be an object")
        user = entry.get("username")
        password = entry.get("password")
        encoded = entry.get("auth")
        if encoded:
            if not isinstance(encoded, str):
                raise ConfigError(f"{ewhere}.auth must be a base64 string")
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise ConfigError(f"{ewhere}.auth is not base64 of 'user:password'") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise ConfigError(f"{ewhere}.auth does not contain 'user:password'")
        if user is None and password is None:
            # identitytoken / registrytoken entries are not supported; skip.
            continue
        if not isinstance(user, str) or not isinstance(password, str):
            raise ConfigError(f"{ewhere}: username and password must both be strings")
        entries[normalize_registry_key(key)] = Credentials(user, password)
    return DockerAuthConfig(path, entries)


def load_docker_config(path: Path | None) -> DockerAuthConfig:
    if path is None:
        return DockerAuthConfig(None, {})
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return DockerAuthConfig(Path(path), {})
    except OSError as e:
        raise ConfigError(f"{path}: cannot read credentials: {e.strerror}") from None
    return parse_docker_config(text, Path(path))


def repository_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


def token_url(challenge: Challenge, scope: str | None) -> str:
    """The GET URL for a Bearer token: realm plus service and scope query parameters."""
    realm = challenge.realm
    if not realm:
        raise AuthError("Bearer challenge has no realm")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AuthError(f"Bearer realm {realm!r} is not an http(s) URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    if scope:
        query.append(("scope", scope))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # time.monotonic() deadline

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.expires_at


def parse_token_response(body: bytes, realm: str) -> Token:
    try:
        obj: Any = json.loads(body)
    except ValueError:
        raise AuthError(f"token server {realm} returned invalid JSON") from None
    if not isinstance(obj, dict):
        raise AuthError(f"token server {realm} returned a non-object")
    value = obj.get("token") or obj.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthError(f"token server {realm} returned no token")
    expires_in = obj.get("expires_in")
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = 60  # the default the distribution spec prescribes
    # Refresh a little early so a token does not expire mid-request.
    margin = min(30.0, expires_in * 0.1)
    return Token(value, time.monotonic() + float(expires_in) - margin)
