"""The node's content store: blobs, layer snapshots, image records, names, leases.

Layout under the store root:

    lock                        flock held while a process owns the store
    blobs/<alg>/<hex>           verified content (manifests, configs, layers)
    ingest/<random>             blobs being downloaded (never read as content)
    snapshots/<chain hex>/fs    one unpacked layer each, keyed by chain ID
    snapshots/<chain hex>/meta.json
    snapshots/.tmp-<random>/    a layer being unpacked
    snapshots/.trash-<random>/  a snapshot being deleted
    images/<alg>/<hex>.json     image record, keyed by manifest digest
    refs.json                   name (canonical reference) -> manifest digest
    leases/<hash>.json          a container rootfs using an image's snapshots

Every write is atomic (temp file + fsync + rename + fsync of the directory),
so after any failure or crash a reader sees either the old or the new state,
and leftovers are confined to `ingest/`, `.tmp-*` and `.trash-*`, which
`open()` and `gc()` remove.  Reference counts are derived from the records
(names and leases hold images; images hold blobs and snapshots) rather than
stored as counters, so they cannot drift.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agent.images.errors import BlobSizeMismatch, BlobTruncated, DigestMismatch, StoreError
from agent.images.reference import DIGEST_HEX_LENGTHS
from api.fsutil import fsync_dir, write_atomic


def syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (one call per unpacked layer, not per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def split_digest(digest: str) -> tuple[str, str]:
    alg, _, hexpart = digest.partition(":")
    if DIGEST_HEX_LENGTHS.get(alg) != len(hexpart) or not all(c in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"invalid digest {digest!r}")
    return alg, hexpart


class BlobWriter:
    """Streams one blob into `ingest/`, verifying size and digest, then renames it into place."""

    def __init__(self, store: "ContentStore", digest: str, size: int | None, what: str) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.what = what
        self.alg, self.hex = split_digest(digest)
        self.name = secrets.token_hex(8)
        self.path = store.ingest_dir / self.name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        store._active_ingest.add(self.name)
        self._hash = hashlib.new(self.alg)
        self.written = 0
        self._done = False

    def write(self, data: bytes) -> None:
        if self.size is not None and self.written + len(data) > self.size:
            raise BlobSizeMismatch(self.what, self.size, self.written + len(data))
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(data)
        self.written += len(data)

    def reset(self) -> None:
        """Start over (a retried download)."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hash = hashlib.new(self.alg)
        self.written = 0

    def commit(self) -> Path:
        if self.size is not None and self.written < self.size:
            raise BlobTruncated(self.what, self.size, self.written)
        actual = f"{self.alg}:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatch(self.what, self.digest, actual)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        dest = self.store.blob_path(self.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path, dest)
        fsync_dir(dest.parent)
        self._finish()
        return dest

    def abort(self) -> None:
        if self._done:
            return
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self.store._active_ingest.discard(self.name)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    media_type: str
    size: int
    diff_id: str
    chain_id: str


@dataclass(frozen=True)
class ImageRecord:
    """What a pull leaves behind for one platform manifest."""

    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    layers: tuple[LayerRecord, ...]
    platform: str
    # Indexes this manifest was reached through (one image can be pulled by
    # a plain tag and via several indexes); held as long as the image is.
    index_digests: tuple[str, ...] = ()
    created: str | None = None
    pulled_at: float = 0.0

    @property
    def id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.config_digest

    def blobs(self) -> list[str]:
        out = [self.manifest_digest, self.config_digest, *(layer.digest for layer in self.layers)]
        out.extend(self.index_digests)
        return out

    def chain_ids(self) -> list[str]:
        return [layer.chain_id for layer in self.layers]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ImageRecord":
        obj = json.loads(data)
        obj["layers"] = tuple(LayerRecord(**layer) for layer in obj["layers"])
        obj["index_digests"] = tuple(obj.get("index_digests", ()))
        return cls(**obj)


@dataclass(frozen=True)
class Lease:
    """A container rootfs holding an image's snapshots."""

    container_dir: str
    manifest_digest: str
    chain_ids: tuple[str, ...]
    created: float = 0.0

    @property
    def key(self) -> str:
        return lease_key(self.container_dir)


def lease_key(container_dir: str | Path) -> str:
    return hashlib.sha256(os.path.abspath(container_dir).encode()).hexdigest()[:32]


@dataclass
class GcResult:
    blobs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    bytes_freed: int = 0


class ContentStore:
    """Owns the store root; one instance per process (guarded by a file lock)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.ingest_dir = self.root / "ingest"
        self.snapshots_dir = self.root / "snapshots"
        self.images_dir = self.root / "images"
        self.leases_dir = self.root / "leases"
        self.refs_path = self.root / "refs.json"
        self._active_ingest: set[str] = set()
        self._active_snapshot_tmp: set[str] = set()
        self._lock_fd = -1

    # --- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        for d in (self.root, self.blobs_dir, self.ingest_dir, self.snapshots_dir, self.images_dir, self.leases_dir,
                  self.blobs_dir / "sha256", self.images_dir / "sha256"):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"image store {self.root} is in use by another process") from None
        self._lock_fd = fd
        # Leftovers of a crash: nothing in them is referenced by any record.
        self.remove_stale()

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def remove_stale(self) -> list[str]:
        removed: list[str] = []
        for p in self.ingest_dir.iterdir():
            if p.name not in self._active_ingest:
                _remove_path(p)
                removed.append(str(p))
        for p in self.snapshots_dir.iterdir():
            if p.name.startswith(".trash-") or (p.name.startswith(".tmp-") and p.name not in self._active_snapshot_tmp):
                _remove_path(p)
                removed.append(str(p))
        for d in (self.root, self.images_dir, self.leases_dir):
            for p in d.rglob(".*.tmp-*"):
                p.unlink(missing_ok=True)
                removed.append(str(p))
        return removed

    # --- blobs -----------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        alg, hexpart = split_digest(digest)
        return self.blobs_dir / alg / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        return self.blob_path(digest).stat().st_size

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store {self.root}") from None

    def writer(self, digest: str, size: int | None, what: str) -> BlobWriter:
        return BlobWriter(self, digest, size, what)

    def put_blob(self, data: bytes, digest: str, what: str = "blob") -> Path:
        with self.writer(digest, len(data), what) as w:
            w.write(data)
            return w.commit()

    def list_blobs(self) -> list[str]:
        out: list[str] = []
        for algdir in sorted(self.blobs_dir.iterdir()):
            if algdir.is_dir():
                out.extend(f"{algdir.name}:{p.name}" for p in sorted(algdir.iterdir()) if not p.name.startswith("."))
        return out

    # --- snapshots -------------------------------------------------------------

    def snapshot_dir(self, chain_id: str) -> Path:
        alg, hexpart = split_digest(chain_id)
        # sha256 chain IDs are the norm; other algorithms keep their prefix.
        return self.snapshots_dir / (hexpart if alg == "sha256" else f"{alg}-{hexpart}")

    def snapshot_fs(self, chain_id: str) -> Path:
        return self.snapshot_dir(chain_id) / "fs"

    def has_snapshot(self, chain_id: str) -> bool:
        return (self.snapshot_dir(chain_id) / "meta.json").is_file()

    def new_snapshot_tmp(self) -> Path:
        name = f".tmp-{secrets.token_hex(8)}"
        path = self.snapshots_dir / name
        path.mkdir(mode=0o700)
        (path / "fs").mkdir(mode=0o755)
        self._active_snapshot_tmp.add(name)
        return path

    def commit_snapshot(self, tmp: Path, chain_id: str, meta: dict[str, Any]) -> Path:
        write_atomic(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
        syncfs(tmp)
        dest = self.snapshot_dir(chain_id)
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Someone else committed the same chain ID first; theirs is as good.
            self.discard_snapshot_tmp(tmp)
        else:
            fsync_dir(self.snapshots_dir)
        self._active_snapshot_tmp.discard(tmp.name)
        return dest

    def discard_snapshot_tmp(self, tmp: Path) -> None:
        _remove_path(tmp)
        self._active_snapshot_tmp.discard(tmp.name)

    def snapshot_meta(self, chain_id: str) -> dict[str, Any]:
        return json.loads((self.snapshot_dir(chain_id) / "meta.json").read_bytes())

    def list_snapshots(self) -> list[str]:
        out = []
        for p in sorted(self.snapshots_dir.iterdir()):
            if p.name.startswith("."):
                continue
            alg, _, hexpart = p.name.rpartition("-")
            out.append(f"{alg or 'sha256'}:{hexpart}")
        return out

    def delete_snapshot(self, chain_id: str) -> int:
        src = self.snapshot_dir(chain_id)
        if not src.exists():
            return 0
        size = int(self.snapshot_meta(chain_id).get("size", 0)) if self.has_snapshot(chain_id) else 0
        # Rename first so the snapshot disappears atomically; a crash during
        # the slow delete leaves only a .trash- directory for the next gc.
        trash = self.snapshots_dir / f".trash-{secrets.token_hex(8)}"
        os.rename(src, trash)
        _remove_path(trash)
        return size

    # --- image records and names ----------------------------------------------

    def _image_path(self, manifest_digest: str) -> Path:
        alg, hexpart = split_digest(manifest_digest)
        return self.images_dir / alg / f"{hexpart}.json"

    def put_image(self, record: ImageRecord) -> None:
        path = self._image_path(record.manifest_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, record.to_json())

    def get_image(self, manifest_digest: str) -> ImageRecord | None:
        try:
            return ImageRecord.from_json(self._image_path(manifest_digest).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"image record for {manifest_digest} is corrupt: {e}") from None

    def list_images(self) -> list[ImageRecord]:
        out: list[ImageRecord] = []
        for algdir in sorted(self.images_dir.iterdir()):
            for p in sorted(algdir.glob("*.json")):
                if p.name.startswith("."):
                    continue
                rec = self.get_image(f"{algdir.name}:{p.stem}")
                if rec is not None:
                    out.append(rec)
        return out

    def delete_image(self, manifest_digest: str) -> None:
        path = self._image_path(manifest_digest)
        path.unlink(missing_ok=True)

    def refs(self) -> dict[str, str]:
        try:
            obj = json.loads(self.refs_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StoreError(f"{self.refs_path} is corrupt: {e}") from None
        refs = obj.get("refs", {})
        return dict(refs)

    def _write_refs(self, refs: dict[str, str]) -> None:
        write_atomic(self.refs_path, json.dumps({"version": 1, "refs": refs}, indent=1, sort_keys=True).encode())

    def set_ref(self, name: str, manifest_digest: str) -> None:
        refs = self.refs()
        if refs.get(name) != manifest_digest:
            refs[name] = manifest_digest
            self._write_refs(refs)

    def remove_refs(self, names: Iterable[str]) -> None:
        refs = self.refs()
        changed = False
        for n in names:
            if n in refs:
                del refs[n]
                changed = True
        if changed:
            self._write_refs(refs)

    # --- leases ----------------------------------------------------------------

    def put_lease(self, lease: Lease) -> None:
        write_atomic(self.leases_dir / f"{lease.key}.json", json.dumps(asdict(lease), sort_keys=True).encode())

    def get_lease(self, container_dir: str | Path) -> Lease | None:
        try:
            obj = json.loads((self.leases_dir / f"{lease_key(container_dir)}.json").read_bytes())
        except FileNotFoundError:
            return None
        obj["chain_ids"] = tuple(obj["chain_ids"])
        return Lease(**obj)

    def remove_lease(self, container_dir: str | Path) -> None:
        (self.leases_dir / f"{lease_key(container_dir)}.json").unlink(missing_ok=True)
        fsync_dir(self.leases_dir)

    def list_leases(self) -> list[Lease]:
        out = []
        for p in sorted(self.leases_dir.glob("*.json")):
            if p.name.startswith("."):
                continue
            obj = json.loads(p.read_bytes())
            obj["chain_ids"] = tuple(obj["chain_ids"])
            out.append(Lease(**obj))
        return out

    # --- reference counting and garbage collection -----------------------------

    def live_images(self) -> set[str]:
        """Manifest digests held by a name or a lease."""
        live = set(self.refs().values())
        live.update(lease.manifest_digest for lease in self.list_leases())
        return live

    def refcounts(self) -> Counter[str]:
        """How many holders each blob digest / chain ID has right now."""
        counts: Counter[str] = Counter()
        for digest in self.live_images():
            rec = self.get_image(digest)
            if rec is None:
                continue
            counts.update(set(rec.blobs()))
            counts.update(set(rec.chain_ids()))
        for lease in self.list_leases():
            counts.update(set(lease.chain_ids))
        return counts

    def gc(
        self,
        pinned: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> GcResult:
        """Delete image records, blobs and snapshots nothing holds.

        `pinned` are blob digests / chain IDs an in-flight pull still needs.
        `only`, if given, restricts deletion to those blobs/chain IDs/records
        (used to undo one failed pull without touching anything else).
        """
        pinned_set = set(pinned)
        only_set = set(only) if only is not None else None
        result = GcResult()
        live = self.live_images()
        for rec in self.list_images():
            if rec.manifest_digest in live or rec.manifest_digest in pinned_set:
                continue
            if only_set is not None and rec.manifest_digest not in only_set:
                continue
            self.delete_image(rec.manifest_digest)
            result.images.append(rec.manifest_digest)
        held = set(self.refcounts()) | pinned_set
        for digest in self.list_blobs():
            if digest in held or (only_set is not None and digest not in only_set):
                continue
            path = self.blob_path(digest)
            try:
                result.bytes_freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            result.blobs.append(digest)
        for chain_id in self.list_snapshots():
            if chain_id in held or (only_set is not None and chain_id not in only_set):
                continue
            result.bytes_freed += self.delete_snapshot(chain_id)
            result.snapshots.append(chain_id)
        if only_set is None:
            self.remove_stale()
        return result


def _remove_path(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except FileNotFoundError:
        pass

