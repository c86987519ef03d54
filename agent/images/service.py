"""ImageService: the image half of the node-local container engine.

Owns the pull pipeline (reference -> manifest/index -> platform manifest ->
config -> layers -> snapshots -> image record + name), the local image API
(list, inspect, remove, gc, image_config) and container root filesystems
(prepare_rootfs / release_rootfs).  It composes the registry client, the
content store, the unpacker and the overlay mounter, and is the only place
that decides what a failed pull leaves behind: nothing that no other image,
container or in-flight pull holds.

Concurrency: identical concurrent pulls share one pipeline; different pulls
that need the same blob or the same layer snapshot share that download or
unpack.  Content an in-flight pull still needs is pinned so `gc()` and
`remove()` cannot delete it underneath.  Everything runs on the caller's event
loop; unpacking yields to the loop in short slices.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from api.probe import NULL_PROBE, Probe

from agent.images.client import RegistryClient, RegistryConfig
from agent.images.errors import (
    AmbiguousImage,
    BlobSizeMismatch,
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidReference,
    MalformedConfig,
    NoMatchingPlatform,
    RootfsError,
    StoreError,
    UnsupportedMediaType,
)
from agent.images.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    chain_ids,
    host_platform,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from agent.images.reference import Reference, parse_reference
from agent.images.rootfs import RootfsPaths, is_mounted, mount_overlay, remove_dirs, unmount
from agent.images.singleflight import SingleFlight
from agent.images.store import ContentStore, GcResult, ImageRecord, LayerRecord, Lease
from agent.images.unpack import UnpackOptions, unpack_layer_async


class Status(StrEnum):
    RESOLVING = "resolving"
    RESOLVED = "resolved"
    WAITING = "waiting"
    DOWNLOADING = "downloading"
    EXISTS = "already exists"
    DOWNLOADED = "download complete"
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"
    DONE = "pull complete"


@dataclass(frozen=True)
class ProgressEvent:
    ref: str
    kind: str  # "image" | "manifest" | "config" | "layer"
    id: str  # digest of the object ("" for the image as a whole)
    status: Status
    current: int = 0
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class LayerInfo:
    digest: str
    media_type: str
    size: int
    diff_id: str
    chain_id: str


@dataclass(frozen=True)
class Image:
    id: str  # the config digest, as in Docker
    names: tuple[str, ...]
    manifest_digest: str
    manifest_media_type: str
    index_digests: tuple[str, ...]
    platform: str
    layers: tuple[LayerInfo, ...]
    size: int  # sum of compressed layer sizes
    created: str | None
    containers: int  # rootfs leases held by containers

    @property
    def refcount(self) -> int:
        return len(self.names) + self.containers

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["refcount"] = self.refcount
        return d


@dataclass
class RemoveResult:
    untagged: list[str] = field(default_factory=list)
    deleted_images: list[str] = field(default_factory=list)
    deleted_blobs: list[str] = field(default_factory=list)
    deleted_snapshots: list[str] = field(default_factory=list)


_HEX_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{4,64}\Z")


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_error(e)
        if not isinstance(e, asyncio.CancelledError):
            return e
    return eg.exceptions[0]


class ImageService:
    def __init__(
        self,
        root: Path | str,
        config: RegistryConfig | None = None,
        *,
        platform: Platform | None = None,
        unpack_options: UnpackOptions = UnpackOptions(),
    ) -> None:
        self.config = config or RegistryConfig()
        self.client = RegistryClient(self.config)
        self.store = ContentStore(root)
        self.store.open()
        self.platform = platform or host_platform()
        self.unpack_options = unpack_options
        self._pull_flight: SingleFlight[str] = SingleFlight()
        self._blob_flight: SingleFlight[None] = SingleFlight()
        self._unpack_flight: SingleFlight[None] = SingleFlight()
        self._pins: Counter[str] = Counter()
        self._downloads = asyncio.Semaphore(max(1, self.config.max_concurrent_downloads))
        # Pull durations and downloaded bytes for the daemon's metrics (set by the daemon).
        self.probe: Probe = NULL_PROBE

    async def close(self) -> None:
        await self.client.close()
        self.store.close()

    async def __aenter__(self) -> "ImageService":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- pull ----------------------------------------------------------------------

    async def pull(self, ref: str, progress: ProgressCallback | None = None) -> Image:
        r = parse_reference(ref)
        key = str(r)

        async def run(emit: Callable[[Any], None]) -> str:
            t0 = time.monotonic()
            digest = await self._pull(r, emit)
            self.probe.image_pulled(time.monotonic() - t0)
            return digest

        manifest_digest = await self._pull_flight.do(key, run, listener=progress)
        rec = self.store.get_image(manifest_digest)
        if rec is None:  # removed between the pull finishing and us looking
            raise ImageNotFound(f"image {key} was removed while it was being pulled")
        return self._image(rec)

    def _pin(self, pins: list[str], item: str) -> None:
        self._pins[item] += 1
        pins.append(item)

    async def _pull(self, r: Reference, emit: Callable[[Any], None]) -> str:
        pins: list[str] = []
        name = str(r)

        def ev(kind: str, id_: str, status: Status, current: int = 0, total: int | None = None) -> None:
            emit(ProgressEvent(name, kind, id_, status, current, total))

        try:
            ev("image", "", Status.RESOLVING)
            fetched = await self.client.get_manifest(r)
            where = f"manifest {r}"
            parsed = parse_manifest(fetched.body, fetched.content_type, where)
            index_digest: str | None = None
            if isinstance(parsed, ImageIndex):
                index_digest = fetched.digest
                self._pin(pins, index_digest)
                if not self.store.has_blob(index_digest):
                    self.store.put_blob(fetched.body, index_digest, f"index {r}")
                desc = select_platform(parsed, self.platform, f"index {r}")
                fetched = await self.client.get_manifest(r, desc.digest)
                if len(fetched.body) != desc.size:
                    raise BlobSizeMismatch(f"manifest {desc.digest} of {r}", desc.size, len(fetched.body))
                where = f"manifest {desc.digest} ({desc.platform or 'no platform'}) of {r}"
                parsed = parse_manifest(fetched.body, fetched.content_type or desc.media_type, where)
                if isinstance(parsed, ImageIndex):
                    raise UnsupportedMediaType(parsed.media_type, f"{where} (nested index)")
            assert isinstance(parsed, ImageManifest)
            manifest_digest = fetched.digest
            self._pin(pins, manifest_digest)
            if not self.store.has_blob(manifest_digest):
                self.store.put_blob(fetched.body, manifest_digest, where)
            ev("manifest", manifest_digest, Status.RESOLVED)

            cfg_desc = parsed.config
            self._pin(pins, cfg_desc.digest)
            await self._ensure_blob(r, cfg_desc, "config", ev)
            cfg = parse_image_config(self.store.read_blob(cfg_desc.digest), f"config {cfg_desc.digest} of {r}")
            if cfg.os and cfg.os != "linux":
                raise NoMatchingPlatform(f"image {r} is for {cfg.os}/{cfg.architecture}, not linux")
            if len(cfg.diff_ids) != len(parsed.layers):
                raise MalformedConfig(
                    f"config {cfg_desc.digest} of {r}: {len(cfg.diff_ids)} diff_ids for {len(parsed.layers)} layers"
                )
            chains = chain_ids(cfg.diff_ids)
            layers: list[LayerRecord] = []
            for desc, diff_id, chain in zip(parsed.layers, cfg.diff_ids, chains):
                self._pin(pins, desc.digest)
                self._pin(pins, chain)
                layers.append(LayerRecord(desc.digest, desc.media_type, desc.size, diff_id, chain))
            for layer in layers:
                ev("layer", layer.digest, Status.WAITING, 0, layer.size)
            try:
                async with asyncio.TaskGroup() as tg:
                    for desc, layer in zip(parsed.layers, layers):
                        tg.create_task(self._ensure_layer(r, desc, layer, ev))
            except BaseExceptionGroup as eg:
                raise _first_error(eg) from None
            previous = self.store.get_image(manifest_digest)
            indexes = set(previous.index_digests) if previous else set()
            if index_digest:
                indexes.add(index_digest)
            record = ImageRecord(
                manifest_digest=manifest_digest,
                manifest_media_type=parsed.media_type,
                config_digest=cfg_desc.digest,
                layers=tuple(layers),
                platform=str(Platform("linux", cfg.architecture or self.platform.architecture, cfg.variant)),
                index_digests=tuple(sorted(indexes)),
                created=cfg.created,
                pulled_at=time.time(),
            )
            self.store.put_image(record)
            self.store.set_ref(self._ref_name(r), manifest_digest)
            ev("image", manifest_digest, Status.DONE)
            return manifest_digest
        except BaseException:
            # Undo: delete what this pull touched unless something else holds it.
            touched = set(pins)
            self._unpin(pins)
            self.store.gc(pinned=+self._pins, only=touched)
            raise
        finally:
            self._unpin(pins)

    def _unpin(self, pins: list[str]) -> None:
        for item in pins:
            self._pins[item] -= 1
            if self._pins[item] <= 0:
                del self._pins[item]
        pins.clear()

    @staticmethod
    def _ref_name(r: Reference) -> str:
        if r.digest:
            return f"{r.name}@{r.digest}"
        return f"{r.name}:{r.tag}"

    async def _ensure_blob(
        self,
        r: Reference,
        desc: Descriptor,
        kind: str,
        ev: Callable[..., None],
    ) -> None:
        if self.store.has_blob(desc.digest):
            ev(kind, desc.digest, Status.EXISTS, desc.size, desc.size)
            return

        async def fetch(emit_raw: Callable[[Any], None]) -> None:
            async with self._downloads:
                if self.store.has_blob(desc.digest):
                    return
                with self.store.writer(desc.digest, desc.size, f"{kind} {desc.digest} of {r}") as w:
                    await self.client.fetch_blob(r, desc, w, progress=lambda cur, tot: emit_raw((cur, tot)))
                    w.commit()
                self.probe.image_bytes(desc.size)

        def listener(raw: Any) -> None:
            cur, tot = raw
            ev(kind, desc.digest, Status.DOWNLOADING, cur, tot)

        await self._blob_flight.do(desc.digest, fetch, listener=listener)
        ev(kind, desc.digest, Status.DOWNLOADED, desc.size, desc.size)

    async def _ensure_layer(self, r: Reference, desc: Descriptor, layer: LayerRecord, ev: Callable[..., None]) -> None:
        if self.store.has_snapshot(layer.chain_id):
            ev("layer", desc.digest, Status.EXISTS, desc.size, desc.size)
            return
        await self._ensure_blob(r, desc, "layer", ev)
        await self._ensure_snapshot(layer, ev)

    async def _ensure_snapshot(self, layer: LayerRecord, ev: Callable[..., None] | None = None) -> None:
        async def unpack(_emit: Callable[[Any], None]) -> None:
            if self.store.has_snapshot(layer.chain_id):
                return
            tmp = self.store.new_snapshot_tmp()
            try:
                result = await unpack_layer_async(
                    self.store.blob_path(layer.digest),
                    tmp / "fs",
                    layer=layer.digest,
                    expected_diff_id=layer.diff_id,
                    options=self.unpack_options,
                )
                self.store.commit_snapshot(
                    tmp,
                    layer.chain_id,
                    {
                        "chain_id": layer.chain_id,
                        "diff_id": layer.diff_id,
                        "digest": layer.digest,
                        "compression": result.compression,
                        "size": result.size,
                        "entries": result.entries,
                        "skipped": result.skipped,
                        "created": time.time(),
                    },
                )
            except BaseException:
                self.store.discard_snapshot_tmp(tmp)
                raise

        if ev is not None:
            ev("layer", layer.digest, Status.EXTRACTING, 0, layer.size)
        await self._unpack_flight.do(layer.chain_id, unpack)
        if ev is not None:
            ev("layer", layer.digest, Status.EXTRACTED, layer.size, layer.size)

    # --- local images ------------------------------------------------------------------

    def _image(self, rec: ImageRecord) -> Image:
        names = tuple(sorted(n for n, d in self.store.refs().items() if d == rec.manifest_digest))
        containers = sum(1 for lease in self.store.list_leases() if lease.manifest_digest == rec.manifest_digest)
        return Image(
            id=rec.config_digest,
            names=names,
            manifest_digest=rec.manifest_digest,
            manifest_media_type=rec.manifest_media_type,
            index_digests=rec.index_digests,
            platform=rec.platform,
            layers=tuple(LayerInfo(**asdict(layer)) for layer in rec.layers),
            size=sum(layer.size for layer in rec.layers),
            created=rec.created,
            containers=containers,
        )

    def _resolve(self, ref: str) -> tuple[ImageRecord, list[str], str]:
        """Find a local image: (record, names that matched, how: "name" | "digest" | "id")."""
        refs = self.store.refs()
        parsed: Reference | None = None
        try:
            parsed = parse_reference(ref)
        except InvalidReference:
            pass
        if parsed is not None:
            name = self._ref_name(parsed)
            if name in refs:
                rec = self.store.get_image(refs[name])
                if rec is not None:
                    return rec, [name], "name"
            if parsed.digest:
                # Pulled by tag, asked for by repo@digest (manifest or index digest).
                for n, d in refs.items():
                    rec = self.store.get_image(d)
                    if rec is None or not n.startswith(parsed.name + ":") and not n.startswith(parsed.name + "@"):
                        continue
                    if parsed.digest == rec.manifest_digest or parsed.digest in rec.index_digests:
                        return rec, [], "digest"
        if _HEX_PREFIX.match(ref):
            prefix = ref if ref.startswith("sha256:") else "sha256:" + ref
            matches = [
                rec for rec in self.store.list_images()
                if rec.config_digest.startswith(prefix) or rec.manifest_digest.startswith(prefix)
            ]
            ids = {rec.config_digest for rec in matches}
            if len(ids) > 1:
                raise AmbiguousImage(f"image ID prefix {ref!r} matches {len(ids)} images; give more characters")
            if matches:
                by_config = any(rec.config_digest.startswith(prefix) for rec in matches)
                return matches[0], [], "id" if by_config else "digest"
        raise ImageNotFound(f"no such image: {ref}")

    async def resolve(self, ref: str) -> str:
        """`ref` pinned to the digest its registry serves now (the tag is kept
        for display): what a service records so every node runs the same bits."""
        r = parse_reference(ref)
        if r.digest:
            return str(r)
        fetched = await self.client.get_manifest(r)
        return str(r.with_digest(fetched.digest))

    def list(self) -> list[Image]:
        live = self.store.live_images()
        images = [self._image(rec) for rec in self.store.list_images() if rec.manifest_digest in live]
        return sorted(images, key=lambda i: (i.names[0] if i.names else "~", i.manifest_digest))

    def has(self, ref: str) -> bool:
        """Whether the image is here (cheap: no lease scan, unlike inspect)."""
        try:
            self._resolve(ref)
        except ImageNotFound:
            return False
        return True

    def inspect(self, ref: str) -> Image:
        rec, _, _ = self._resolve(ref)
        return self._image(rec)

    def image_config(self, ref: str) -> dict[str, Any]:
        """The image's runtime defaults (the OCI config's `config` object: Env, Entrypoint, Cmd, ...)."""
        rec, _, _ = self._resolve(ref)
        cfg = parse_image_config(self.store.read_blob(rec.config_digest), f"config {rec.config_digest}")
        return copy.deepcopy(cfg.config)

    def remove(self, ref: str, force: bool = False) -> RemoveResult:
        """`image rm`: drop a name (or every name, for an ID) and delete content nothing else holds."""
        rec, matched, how = self._resolve(ref)
        refs = self.store.refs()
        all_names = sorted(n for n, d in refs.items() if d == rec.manifest_digest)
        if how != "name":
            # An image ID may cover several records (same config, different manifests).
            recs = [r for r in self.store.list_images() if r.config_digest == rec.config_digest] if how == "id" else [rec]
            targets = {r.manifest_digest for r in recs}
            to_remove = sorted(n for n, d in refs.items() if d in targets)
            if len(to_remove) > 1 and not force:
                raise ImageInUse(
                    f"image {ref} is referenced by {len(to_remove)} names ({', '.join(to_remove)}); "
                    "remove them by name or use force"
                )
        else:
            recs = [rec]
            targets = {rec.manifest_digest}
            to_remove = matched
        remaining = [n for n in all_names if n not in to_remove]
        leases = [lease for lease in self.store.list_leases() if lease.manifest_digest in targets]
        if not remaining and leases and not force:
            raise ImageInUse(
                f"image {ref} is used by {len(leases)} container(s) ({', '.join(lease.container_dir for lease in leases)}); "
                "remove the containers first or use force"
            )
        self.store.remove_refs(to_remove)
        only: set[str] = set()
        for r in recs:
            only.update(r.blobs())
            only.update(r.chain_ids())
            only.add(r.manifest_digest)
        gc = self.store.gc(pinned=+self._pins, only=only)
        return RemoveResult(to_remove, gc.images, gc.blobs, gc.snapshots)

    def gc(self) -> GcResult:
        """Delete every image record, blob and snapshot that no name, container or pull holds."""
        return self.store.gc(pinned=+self._pins)

    # --- container root filesystems ------------------------------------------------------

    async def prepare_rootfs(self, ref: str, container_dir: Path | str) -> Path:
        """Mount the image's layers + a fresh (or the existing) upper dir at <container_dir>/rootfs."""
        rec, _, _ = self._resolve(ref)
        cdir = Path(os.path.abspath(container_dir))
        paths = RootfsPaths(cdir)
        existing = self.store.get_lease(cdir)
        if existing is not None and existing.manifest_digest != rec.manifest_digest:
            raise RootfsError(f"{cdir} already holds a rootfs of image {existing.manifest_digest}")
        if existing is not None and is_mounted(paths.rootfs):
            return paths.rootfs
        pins: list[str] = []
        try:
            for layer in rec.layers:
                self._pin(pins, layer.digest)
                self._pin(pins, layer.chain_id)
            lease = Lease(str(cdir), rec.manifest_digest, tuple(rec.chain_ids()), time.time())
            # The lease goes first so a gc running while we mount cannot delete the layers.
            self.store.put_lease(lease)
            try:
                for layer in rec.layers:
                    if not self.store.has_snapshot(layer.chain_id):
                        if not self.store.has_blob(layer.digest):
                            raise StoreError(
                                f"layer {layer.digest} of {ref} is missing locally; pull the image again"
                            )
                        await self._ensure_snapshot(layer)
                lowers = [self.store.snapshot_fs(c) for c in reversed(rec.chain_ids())]
                return await mount_overlay(cdir, lowers)
            except BaseException:
                if existing is None:
                    self.store.remove_lease(cdir)
                    try:
                        remove_dirs(cdir)
                    except (OSError, ImageError):
                        pass
                raise
        finally:
            self._unpin(pins)

    def unmount_rootfs(self, container_dir: Path | str) -> None:
        """Unmount but keep the container's upper dir and lease (container stopped, not removed)."""
        unmount(Path(container_dir))

    def release_rootfs(self, container_dir: Path | str) -> None:
        """Unmount, delete the container's upper/work dirs and drop its hold on the image."""
        cdir = Path(os.path.abspath(container_dir))
        unmount(cdir)
        remove_dirs(cdir)
        self.store.remove_lease(cdir)
