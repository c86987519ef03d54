"""Images: OCI distribution client, content store, layer unpack, overlay rootfs.

The public surface is `ImageService` (see service.py) plus the exception
classes in errors.py; everything else is an implementation module.
"""

from agent.images.client import RegistryConfig
from agent.images.errors import (
    AmbiguousImage,
    AuthError,
    BlobSizeMismatch,
    BlobTruncated,
    BlobUnknown,
    ConfigError,
    DigestMismatch,
    HostileLayer,
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidReference,
    LayerFormatError,
    MalformedConfig,
    MalformedManifest,
    ManifestUnknown,
    NoMatchingPlatform,
    RegistryError,
    RegistryUnreachable,
    RepositoryUnknown,
    RootfsError,
    StoreError,
    UnsupportedMediaType,
)
from agent.images.reference import Reference, parse_reference
from agent.images.service import Image, ImageService, LayerInfo, ProgressEvent, RemoveResult, Status
from agent.images.unpack import UnpackOptions

__all__ = [
    "AmbiguousImage",
    "AuthError",
    "BlobSizeMismatch",
    "BlobTruncated",
    "BlobUnknown",
    "ConfigError",
    "DigestMismatch",
    "HostileLayer",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "ImageService",
    "InvalidReference",
    "LayerFormatError",
    "LayerInfo",
    "MalformedConfig",
    "MalformedManifest",
    "ManifestUnknown",
    "NoMatchingPlatform",
    "ProgressEvent",
    "Reference",
    "RegistryConfig",
    "RegistryError",
    "RegistryUnreachable",
    "RemoveResult",
    "RepositoryUnknown",
    "RootfsError",
    "Status",
    "StoreError",
    "UnpackOptions",
    "UnsupportedMediaType",
    "parse_reference",
]
