"""Exceptions raised by the image half of the node-local engine.

Every error a user can see names what was wrong and where (registry host,
repository, digest, layer member path) so that the daemon can hand the message
to the CLI unchanged.  All of them derive from `ImageError`, so callers that do
not care about the kind can catch one class.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base class for everything agent.images raises on purpose."""


class InvalidReference(ImageError, ValueError):
    """An image reference string could not be parsed."""


class ConfigError(ImageError):
    """Operator-supplied configuration (docker config.json, certs dir) is bad."""


class RegistryError(ImageError):
    """The registry answered with an error we cannot recover from."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnreachable(RegistryError):
    """No HTTP exchange with the registry was possible (refused, timeout, TLS)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"registry {host} unreachable: {reason}")
        self.host = host
        self.reason = reason


class AuthError(RegistryError):
    """Credentials were missing, wrong, or did not grant access."""


class ManifestUnknown(RegistryError):
    """The registry has no manifest for the requested tag or digest."""

    def __init__(self, registry: str, repository: str, reference: str, detail: str = "") -> None:
        what = "digest" if ":" in reference and reference.startswith("sha") else "tag"
        msg = f"repository {repository} has no {what} {reference} at {registry}"
        super().__init__(msg + (f" ({detail})" if detail else ""), status=404, code="MANIFEST_UNKNOWN")
        self.registry = registry
        self.repository = repository
        self.reference = reference


class RepositoryUnknown(ManifestUnknown):
    """The repository itself does not exist (NAME_UNKNOWN)."""

    def __init__(self, registry: str, repository: str, reference: str, detail: str = "") -> None:
        RegistryError.__init__(
            self,
            f"repository {repository} not found at {registry}" + (f" ({detail})" if detail else ""),
            status=404,
            code="NAME_UNKNOWN",
        )
        self.registry = registry
        self.repository = repository
        self.reference = reference


class BlobUnknown(RegistryError):
    """The registry does not have a blob a manifest refers to."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest that names it."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class BlobTruncated(ImageError):
    """Fewer bytes arrived than the descriptor promised."""

    def __init__(self, what: str, expected: int, actual: int) -> None:
        super().__init__(f"{what}: truncated: expected {expected} bytes, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class BlobSizeMismatch(ImageError):
    """More bytes arrived than the descriptor promised."""

    def __init__(self, what: str, expected: int, actual: int) -> None:
        super().__init__(f"{what}: size mismatch: expected {expected} bytes, got at least {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class UnsupportedMediaType(ImageError):
    """A manifest, config or layer has a media type we do not handle."""

    def __init__(self, media_type: str, where: str) -> None:
        super().__init__(f"unsupported media type {media_type!r} for {where}")
        self.media_type = media_type
        self.where = where


class MalformedManifest(ImageError):
    """A manifest or index is not valid JSON or violates the spec."""


class MalformedConfig(ImageError):
    """An image config blob is not valid JSON or has fields of the wrong type."""


class NoMatchingPlatform(ImageError):
    """An index has no manifest for this host's platform."""


class LayerFormatError(ImageError):
    """A layer could not be decompressed or is not a valid tar stream."""


class HostileLayer(ImageError):
    """A layer member tried to write outside its snapshot directory."""

    def __init__(self, layer: str, member: str, reason: str) -> None:
        super().__init__(f"layer {layer}: refusing member {member!r}: {reason}")
        self.layer = layer
        self.member = member
        self.reason = reason


class ImageNotFound(ImageError):
    """No local image matches a reference or ID."""


class AmbiguousImage(ImageError):
    """A short image ID matches more than one local image."""


class ImageInUse(ImageError):
    """An image cannot be removed because containers or other names use it."""


class StoreError(ImageError):
    """The local content store is damaged or locked by another process."""


class RootfsError(ImageError):
    """Mounting or unmounting a container root filesystem failed."""
