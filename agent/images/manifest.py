"""Manifests, indexes and image configs: media types, parsing, validation, platform choice.

Owns the sans-I/O side of the OCI image spec and Docker schema2: turning
bytes from a registry into typed objects (or a clear error naming the field
that is wrong), choosing linux/<this arch> out of an index, checking the image
config fields the runtime will rely on, and computing chain IDs.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from agent.images.errors import (
    InvalidReference,
    MalformedConfig,
    MalformedManifest,
    NoMatchingPlatform,
    UnsupportedMediaType,
)
from agent.images.reference import validate_digest
from api.arch import oci_platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1_PLAIN = "application/vnd.docker.distribution.manifest.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT_MANIFESTS = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})


class Compression:
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


# Layer media type -> compression it declares.  Unpack sniffs magic bytes
# anyway; this table decides what we accept at all.
LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
    # Some registries/tools write this for uncompressed docker layers.
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return s + (f"/{self.variant}" if self.variant else "")

    def to_dict(self) -> dict[str, str]:
        d = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            d["variant"] = self.variant
        return d


def host_platform() -> Platform:
    machine = _platform.machine()
    arch, variant = oci_platform(machine)
    return Platform("linux", arch, variant)


def _norm_variant(arch: str, variant: str) -> str:
    # arm64 images usually omit the variant; "v8" is the only one that exists.
    if arch == "arm64" and variant in ("", "v8"):
        return "v8"
    return variant


def platform_matches(want: Platform, have: Platform) -> bool:
    if want.os != have.os or want.architecture != have.architecture:
        return False
    if not have.variant or not want.variant:
        return True
    return _norm_variant(want.architecture, want.variant) == _norm_variant(have.architecture, have.variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform.to_dict()
        return d


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _field(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise MalformedManifest(f"{where}: missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise MalformedManifest(f"{where}: field {key!r} must be {tname}, got {type(value).__name__}")
    return value


def _parse_descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise MalformedManifest(f"{where}: descriptor must be an object")
    media_type = _field(obj, "mediaType", str, where)
    digest = _field(obj, "digest", str, where)
    try:
        validate_digest(digest, where=f"{where}.digest")
    except InvalidReference as e:
        raise MalformedManifest(str(e)) from None
    size = _field(obj, "size", int, where)
    if size < 0:
        raise MalformedManifest(f"{where}: field 'size' must not be negative")
    plat = None
    p = obj.get("platform")
    if p is not None:
        if not isinstance(p, dict):
            raise MalformedManifest(f"{where}.platform must be an object")
        os_ = _field(p, "os", str, f"{where}.platform")
        arch = _field(p, "architecture", str, f"{where}.platform")
        variant = _field(p, "variant", str, f"{where}.platform", required=False) or ""
        plat = Platform(os_, arch, variant)
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise MalformedManifest(f"{where}.urls must be a list of strings")
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict):
        raise MalformedManifest(f"{where}.annotations must be an object")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=plat,
        urls=tuple(urls),
        annotations=tuple(sorted((str(k), str(v)) for k, v in ann.items())),
    )


def detect_media_type(body: bytes, content_type: str | None, where: str) -> tuple[str, dict[str, Any]]:
    """Decode a manifest body and decide its media type.

    The `mediaType` field wins over Content-Type (registries and proxies send
    `application/json` or nothing); if both are specific and disagree the
    content is ambiguous and refused.
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise MalformedManifest(f"{where}: manifest is {len(body)} bytes, more than {MAX_MANIFEST_BYTES}")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_PLAIN):
        raise UnsupportedMediaType(ctype, f"{where} (Docker schema 1 is deprecated and not supported)")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedManifest(f"{where}: manifest is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedManifest(f"{where}: manifest must be a JSON object")
    field_type = obj.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise MalformedManifest(f"{where}: field 'mediaType' must be a string")
    specific_ctype = ctype if ctype and ctype not in ("application/json", "text/plain", "application/octet-stream") else ""
    if obj.get("schemaVersion") == 1:
        raise UnsupportedMediaType(field_type or specific_ctype or DOCKER_SCHEMA1, f"{where} (Docker schema 1 is not supported)")
    media_type = field_type or specific_ctype
    if field_type and specific_ctype and field_type != specific_ctype:
        raise MalformedManifest(
            f"{where}: Content-Type {specific_ctype!r} disagrees with mediaType field {field_type!r}"
        )
    if not media_type:
        # OCI allows omitting mediaType; fall back on the structure.
        if "manifests" in obj:
            media_type = OCI_INDEX
        elif "config" in obj and "layers" in obj:
            media_type = OCI_MANIFEST
        else:
            raise MalformedManifest(f"{where}: cannot tell the manifest type (no mediaType, no Content-Type)")
    if media_type not in INDEX_TYPES and media_type not in MANIFEST_TYPES:
        raise UnsupportedMediaType(media_type, where)
    if obj.get("schemaVersion") != 2:
        raise MalformedManifest(f"{where}: schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
    return media_type, obj


def parse_manifest(body: bytes, content_type: str | None, where: str) -> ImageIndex | ImageManifest:
    media_type, obj = detect_media_type(body, content_type, where)
    if media_type in INDEX_TYPES:
        items = _field(obj, "manifests", list, where)
        descs = tuple(_parse_descriptor(m, f"{where}.manifests[{i}]") for i, m in enumerate(items))
        return ImageIndex(media_type, descs)
    config = _parse_descriptor(_field(obj, "config", dict, where), f"{where}.config")
    layers_raw = _field(obj, "layers", list, where)
    layers = tuple(_parse_descriptor(m, f"{where}.layers[{i}]") for i, m in enumerate(layers_raw))
    if config.media_type not in CONFIG_TYPES:
        raise UnsupportedMediaType(config.media_type, f"{where} config (not a container image; an artifact?)")
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise UnsupportedMediaType(layer.media_type, f"{where}.layers[{i}] ({layer.digest})")
    return ImageManifest(media_type, config, layers)


def select_platform(index: ImageIndex, want: Platform, where: str) -> Descriptor:
    """Pick the manifest for `want`; exact variant beats a variant-less entry."""
    candidates: list[Descriptor] = []
    seen: list[str] = []
    for d in index.manifests:
        if d.media_type not in MANIFEST_TYPES:
            # Nested indexes and artifacts are not images we can run.
            continue
        if d.platform is None:
            continue
        seen.append(str(d.platform))
        if platform_matches(want, d.platform):
            candidates.append(d)
    if not candidates:
        # A single untagged manifest (no platform field) is taken as-is.
        plain = [d for d in index.manifests if d.media_type in MANIFEST_TYPES and d.platform is None]
        if len(plain) == 1 and len(index.manifests) == 1:
            return plain[0]
        avail = ", ".join(seen) or "none"
        raise NoMatchingPlatform(f"{where}: no manifest for {want} (available: {avail})")
    exact = [d for d in candidates if d.platform and d.platform.variant == want.variant]
    return (exact or candidates)[0]


# --- image config -------------------------------------------------------------

_STR_LIST_FIELDS = ("Env", "Entrypoint", "Cmd", "Shell", "OnBuild")
_STR_FIELDS = ("User", "WorkingDir", "StopSignal")
_MAP_FIELDS = ("ExposedPorts", "Volumes", "Labels")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config the engine relies on, validated."""

    os: str
    architecture: str
    variant: str
    diff_ids: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    created: str | None = None


def parse_image_config(body: bytes, where: str) -> ImageConfig:
    if len(body) > MAX_CONFIG_BYTES:
        raise MalformedConfig(f"{where}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedConfig(f"{where}: config is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedConfig(f"{where}: config must be a JSON object")

    def want(o: dict[str, Any], key: str, typ: type, path: str, default: Any) -> Any:
        v = o.get(key)
        if v is None:
            return default
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise MalformedConfig(f"{where}: field {path} must be {typ.__name__}, got {type(v).__name__}")
        return v

    os_ = want(obj, "os", str, "os", "")
    arch = want(obj, "architecture", str, "architecture", "")
    variant = want(obj, "variant", str, "variant", "")
    rootfs = want(obj, "rootfs", dict, "rootfs", None)
    if rootfs is None:
        raise MalformedConfig(f"{where}: missing field rootfs")
    if rootfs.get("type") != "layers":
        raise MalformedConfig(f"{where}: rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    diff_ids = want(rootfs, "diff_ids", list, "rootfs.diff_ids", [])
    for i, d in enumerate(diff_ids):
        if not isinstance(d, str):
            raise MalformedConfig(f"{where}: rootfs.diff_ids[{i}] must be a string")
        try:
            validate_digest(d, where=f"{where}: rootfs.diff_ids[{i}]")
        except InvalidReference as e:
            raise MalformedConfig(str(e)) from None
    cfg = want(obj, "config", dict, "config", {})
    for key in _STR_LIST_FIELDS:
        v = cfg.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(s, str) for s in v)):
            raise MalformedConfig(f"{where}: field config.{key} must be a list of strings")
    for key in _STR_FIELDS:
        v = cfg.get(key)
        if v is not None and not isinstance(v, str):
            raise MalformedConfig(f"{where}: field config.{key} must be a string")
    for key in _MAP_FIELDS:
        v = cfg.get(key)
        if v is not None and not isinstance(v, dict):
            raise MalformedConfig(f"{where}: field config.{key} must be an object")
    for i, e in enumerate(cfg.get("Env") or []):
        if "=" not in e:
            raise MalformedConfig(f"{where}: config.Env[{i}] {e!r} is not NAME=value")
    hc = cfg.get("Healthcheck")
    if hc is not None:
        if not isinstance(hc, dict):
            raise MalformedConfig(f"{where}: field config.Healthcheck must be an object")
        t = hc.get("Test")
        if t is not None and (not isinstance(t, list) or not all(isinstance(s, str) for s in t)):
            raise MalformedConfig(f"{where}: field config.Healthcheck.Test must be a list of strings")
        for k in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
            v = hc.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise MalformedConfig(f"{where}: field config.Healthcheck.{k} must be a non-negative integer")
    created = obj.get("created") if isinstance(obj.get("created"), str) else None
    return ImageConfig(os_, arch, variant, tuple(diff_ids), cfg, created)


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append(sha256_digest(f"{out[-1]} {d}".encode()))
    return out
