"""Image references: parse, validate and normalise `registry/namespace/repo:tag@digest`.

Owns the grammar of references (the one Docker and the OCI distribution spec
use) and the Docker Hub defaults: no registry means docker.io, a single path
component on docker.io gets the `library/` prefix, no tag and no digest means
`latest`.  Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.images.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
# Docker Hub's API is not served from docker.io itself.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z"
)
_DIGEST_ALGORITHM = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*\Z")
_DIGEST_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+\Z")
# Lengths of the hex encodings of the algorithms we can verify.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


def validate_digest(digest: str, where: str = "digest") -> str:
    """Return `digest` if it is `<alg>:<hex>` with an algorithm we can verify."""
    alg, sep, enc = digest.partition(":")
    if not sep or not _DIGEST_ALGORITHM.match(alg) or not _DIGEST_ENCODED.match(enc):
        raise InvalidReference(f"{where}: {digest!r} is not a digest (expected sha256:<64 hex>)")
    want = DIGEST_HEX_LENGTHS.get(alg)
    if want is None:
        raise InvalidReference(f"{where}: unsupported digest algorithm {alg!r} in {digest!r}")
    if len(enc) != want or not re.fullmatch(r"[0-9a-f]+", enc):
        raise InvalidReference(f"{where}: {digest!r}: {alg} digest must be {want} lowercase hex characters")
    return digest


@dataclass(frozen=True)
class Reference:
    """A fully normalised reference; `str()` gives the canonical form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the API: the digest if pinned, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s

    def familiar(self) -> str:
        """The short form users type: `busybox:latest`, `ghcr.io/x/y:1`."""
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository.removeprefix("library/")
            s = repo
        else:
            s = self.name
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        return first, rest
    return DEFAULT_REGISTRY, name


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference, raising `InvalidReference` naming the bad part."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"image reference {text!r} contains whitespace")
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        validate_digest(digest, where=f"digest part of {text!r}")
    tag: str | None = None
    # A ':' after the last '/' separates the tag; one before it is a port.
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"tag {tag!r} in {text!r} is invalid (letters, digits, '_', '.', '-'; at most 128; "
                "must not start with '.' or '-')"
            )
    if not remainder:
        raise InvalidReference(f"image reference {text!r} has no repository name")
    registry, path = _split_domain(remainder)
    if registry != DEFAULT_REGISTRY or remainder.startswith(DEFAULT_REGISTRY + "/"):
        if not _DOMAIN.match(registry):
            raise InvalidReference(f"registry {registry!r} in {text!r} is not a valid host[:port]")
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if not path:
        raise InvalidReference(f"image reference {text!r} has no repository path after the registry")
    for comp in path.split("/"):
        if not comp:
            raise InvalidReference(f"repository {path!r} in {text!r} has an empty path component")
        if not _PATH_COMPONENT.match(comp):
            hint = " (repository names must be lowercase)" if comp.lower() != comp else ""
            raise InvalidReference(
                f"repository path component {comp!r} in {text!r} is invalid{hint}"
            )
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = "library/" + path
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name in {text!r} is longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
