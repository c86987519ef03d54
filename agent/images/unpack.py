"""Layer unpack: a (gzip | zstd | plain) tar stream into one directory, safely.

Owns the translation of one OCI layer into an overlayfs lower directory:

* Decompression is chosen by magic bytes (gzip 1f8b, zstd 28b52ffd, else
  tar); the uncompressed stream is hashed and checked against the config's
  diff_id.
* Member paths are cleaned lexically: a leading `/` is dropped (absolute
  names are neutralised into the layer), `..` that would climb above the
  layer root refuses the whole layer (`HostileLayer`).
* Nothing is ever written through a symlink: every parent directory is
  opened component by component with O_NOFOLLOW relative to the previous
  directory fd (openat semantics), so a symlink in a parent position refuses
  the layer; entries are created with *at() calls relative to that fd, and
  an existing symlink at the target is unlinked, not followed.
* Hardlinks must name a non-directory that this layer already created inside
  the layer directory; anything else refuses the layer.
* Device nodes: char/block devices in layers are NOT created unless
  `UnpackOptions.allow_devices` is set and we run as root; a 0:0 char device
  is never created from a tar because overlayfs would read it as a whiteout.
  Containers get /dev from the runtime (tmpfs + standard nodes), which is what
  Docker's default device cgroup allows anyway.  FIFOs are created.
* OCI whiteouts: `.wh.NAME` becomes an overlay whiteout (char device 0:0
  named NAME); `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
  directory; other `.wh..wh.*` (aufs bookkeeping) are ignored.  A whiteout
  only hides lower layers: if this layer also has NAME, NAME stays (and a
  directory is made opaque so the lower one does not show through).
* uid/gid (when root), mode incl. setuid/setgid/sticky, mtime and xattrs in
  the `user.` namespace plus `security.capability` are preserved; other
  xattrs (notably `trusted.overlay.*`, which would let a layer forge overlay
  metadata) are dropped and listed in `UnpackResult.skipped`.

The work is a generator that yields after every member and every chunk of
file data; `unpack_layer_async` drives it with short time slices so a large
layer does not stall the event loop (no threads).
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import time
import zlib
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from agent.images.errors import DigestMismatch, HostileLayer, LayerFormatError
from agent.images.manifest import Compression

CHUNK = 1024 * 1024
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class UnpackOptions:
    allow_devices: bool = False
    # None: preserve ownership exactly when running as root.
    preserve_ownership: bool | None = None
    xattr_prefixes: tuple[str, ...] = ("user.", "security.capability")


@dataclass
class UnpackResult:
    diff_id: str
    compression: str
    size: int = 0  # bytes of regular file content written
    entries: int = 0
    skipped: list[str] = field(default_factory=list)


def sniff_compression(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_zstd_framing(f: BinaryIO, layer: str) -> None:
    """Walk the frame and block headers of a seekable zstd stream without decompressing.

    The zstandard stream reader treats a stream that ends mid-frame as a
    clean end of data; this catches truncation and trailing garbage up front.
    Cost: one small read per 128 KiB block.
    """

    def bad(why: str) -> LayerFormatError:
        return LayerFormatError(f"layer {layer}: corrupt zstd stream: {why}")

    start = f.tell()
    end = f.seek(0, os.SEEK_END)
    pos = start
    frames = 0
    while pos < end:
        f.seek(pos)
        magic = f.read(4)
        if len(magic) < 4:
            raise bad(f"trailing {len(magic)} bytes after frame {frames}")
        if magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # skippable frame
            size_raw = f.read(4)
            if len(size_raw) < 4:
                raise bad("truncated skippable frame header")
            pos += 8 + int.from_bytes(size_raw, "little")
            if pos > end:
                raise bad("truncated skippable frame")
            frames += 1
            continue
        if magic != _ZSTD_MAGIC:
            raise bad(f"bad frame magic {magic.hex()} at offset {pos}")
        fhd_raw = f.read(1)
        if not fhd_raw:
            raise bad("truncated frame header")
        fhd = fhd_raw[0]
        if fhd & 0x08:
            raise bad("reserved bit set in frame header")
        single_segment = bool(fhd & 0x20)
        checksum = bool(fhd & 0x04)
        did_len = (0, 1, 2, 4)[fhd & 0x03]
        fcs_len = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
        pos += 5 + (0 if single_segment else 1) + did_len + fcs_len
        while True:
            if pos + 3 > end:
                raise bad(f"stream ends inside frame {frames} (truncated)")
            f.seek(pos)
            hdr = int.from_bytes(f.read(3), "little")
            last, btype, bsize = hdr & 1, (hdr >> 1) & 3, hdr >> 3
            if btype == 3:
                raise bad(f"reserved block type at offset {pos}")
            pos += 3 + (1 if btype == 1 else bsize)
            if pos > end:
                raise bad(f"stream ends inside frame {frames} (truncated)")
            if last:
                break
        if checksum:
            pos += 4
            if pos > end:
                raise bad(f"stream ends inside frame {frames} checksum (truncated)")
        frames += 1
    f.seek(start)


class _HashingReader:
    """Decompressing reader that hashes what it returns and maps codec errors."""

    def __init__(self, raw: BinaryIO, compression: str, layer: str) -> None:
        self.layer = layer
        self.compression = compression
        self._raw = raw
        self._stream: BinaryIO
        if compression == Compression.GZIP:
            self._stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        elif compression == Compression.ZSTD:
            if raw.seekable():
                check_zstd_framing(raw, layer)
            self._stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[assignment]
        else:
            self._stream = raw
        self._hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        try:
            data = self._stream.read(n)
        except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as e:
            raise LayerFormatError(f"layer {self.layer}: corrupt {self.compression} stream: {e}") from None
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _Unpacker:
    def __init__(self, src: BinaryIO, dest: Path, layer: str, expected_diff_id: str | None, options: UnpackOptions) -> None:
        self.layer = layer
        self.expected = expected_diff_id
        self.options = options
        self.root_owner = os.geteuid() == 0
        self.preserve_owner = self.root_owner if options.preserve_ownership is None else options.preserve_ownership
        head = src.read(4)
        src.seek(0)
        self.reader = _HashingReader(src, sniff_compression(head), layer)
        self.result = UnpackResult(diff_id="", compression=self.reader.compression)
        self.dest = dest
        self.root_fd = -1
        self.whiteouts: set[Path_] = set()
        self.dir_times: dict[Path_, int] = {}

    # --- path handling ----------------------------------------------------------

    def _split(self, name: str, member: str) -> Path_:
        if "\x00" in name:
            raise HostileLayer(self.layer, member, "path contains a NUL byte")
        parts: list[str] = []
        for comp in name.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise HostileLayer(self.layer, member, "path climbs out of the layer with '..'")
                parts.pop()
            else:
                parts.append(comp)
        return tuple(parts)

    def _open_dir(self, parts: Path_, member: str, create: bool = True) -> int:
        """Open the directory `parts` below the root without following any symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                prefix = parts[: i + 1]
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    shown = "/".join(prefix)
                    if stat.S_ISLNK(st.st_mode):
                        raise HostileLayer(self.layer, member, f"parent {shown!r} is a symlink; refusing to follow it") from None
                    if prefix in self.whiteouts and create:
                        # Deleted-then-recreated in this layer: a fresh opaque dir.
                        os.unlink(comp, dir_fd=fd)
                        self.whiteouts.discard(prefix)
                        os.mkdir(comp, 0o755, dir_fd=fd)
                        nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                        self._set_opaque(nfd, member)
                    else:
                        raise LayerFormatError(
                            f"layer {self.layer}: member {member!r}: parent {shown!r} is not a directory"
                        ) from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _clear_slot(self, pfd: int, name: str, path: Path_, new_is_dir: bool) -> tuple[bool, bool]:
        """Make room for a new entry. Returns (existing directory kept, replaced a whiteout)."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False, False
        was_whiteout = path in self.whiteouts
        self.whiteouts.discard(path)
        if stat.S_ISDIR(st.st_mode):
            if new_is_dir:
                return True, False
            shutil.rmtree(name, dir_fd=pfd)
        else:
            # Unlink (never open) whatever is there, a symlink included.
            os.unlink(name, dir_fd=pfd)
        return False, was_whiteout

    # --- metadata -----------------------------------------------------------------

    def _xattrs(self, member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            allowed = any(name.startswith(p) if p.endswith(".") else name == p for p in self.options.xattr_prefixes)
            if not allowed:
                self.result.skipped.append(f"{member.name}: xattr {name} dropped")
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
        return out

    def _apply_fd_meta(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.preserve_owner:
            os.fchown(fd, member.uid, member.gid)
        # After chown: chown clears setuid/setgid and file capabilities.
        os.fchmod(fd, member.mode & 0o7777)
        for name, value in self._xattrs(member):
            try:
                os.setxattr(fd, name, value)
            except OSError as e:
                self.result.skipped.append(f"{member.name}: xattr {name} not set ({e.strerror})")

    def _mtime_ns(self, member: tarfile.TarInfo) -> int:
        try:
            return int(float(member.mtime) * 1_000_000_000)
        except (TypeError, ValueError, OverflowError):
            return 0

    def _set_opaque(self, dfd: int, member: str) -> None:
        os.setxattr(dfd, OVERLAY_OPAQUE_XATTR, b"y")

    # --- the walk -------------------------------------------------------------------

    def run(self) -> Generator[None, None, None]:
        self.root_fd = os.open(self.dest, _DIR_FLAGS)
        try:
            try:
                tf = tarfile.open(fileobj=self.reader, mode="r|")  # type: ignore[call-overload]
            except tarfile.ReadError as e:
                raise LayerFormatError(f"layer {self.layer}: not a tar archive: {e}") from None
            with tf:
                while True:
                    try:
                        member = tf.next()
                    except tarfile.TarError as e:
                        raise LayerFormatError(f"layer {self.layer}: corrupt tar stream: {e}") from None
                    if member is None:
                        break
                    try:
                        yield from self._member(tf, member)
                    except (HostileLayer, LayerFormatError):
                        raise
                    except tarfile.TarError as e:
                        raise LayerFormatError(f"layer {self.layer}: member {member.name!r}: corrupt tar data: {e}") from None
                    except (OSError, ValueError) as e:
                        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                        raise LayerFormatError(f"layer {self.layer}: member {member.name!r}: {why}") from None
                    self.result.entries += 1
                    yield
            self.reader.drain()
            self._finish_dirs()
            self.result.diff_id = self.reader.digest()
            if self.expected and self.result.diff_id != self.expected:
                raise DigestMismatch(f"layer {self.layer} uncompressed content (diff_id)", self.expected, self.result.diff_id)
        finally:
            os.close(self.root_fd)

    def _finish_dirs(self) -> None:
        # Deepest first, after everything inside them was written.
        for parts in sorted(self.dir_times, key=len, reverse=True):
            ns = self.dir_times[parts]
            try:
                fd = self._open_dir(parts, "", create=False)
            except (OSError, HostileLayer, LayerFormatError):
                continue
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> Generator[None, None, None]:
        path = self._split(m.name, m.name)
        if not path:
            if m.isdir():
                self._apply_fd_meta(self.root_fd, m)
                self.dir_times[()] = self._mtime_ns(m)
            else:
                self.result.skipped.append(f"{m.name!r}: non-directory entry for the layer root ignored")
            return
        parent, base = path[:-1], path[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(m, parent, base)
            return
        pfd = self._open_dir(parent, m.name)
        try:
            if m.isreg():  # also CONTTYPE and sparse files
                self._clear_slot(pfd, base, path, new_is_dir=False)
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                try:
                    src = tf.extractfile(m)
                    if src is not None:
                        while True:
                            chunk = src.read(CHUNK)
                            if not chunk:
                                break
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                            self.result.size += len(chunk)
                            yield
                    self._apply_fd_meta(fd, m)
                    ns = self._mtime_ns(m)
                    os.utime(fd, ns=(ns, ns))
                finally:
                    os.close(fd)
            elif m.isdir():
                kept, was_whiteout = self._clear_slot(pfd, base, path, new_is_dir=True)
                if not kept:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                dfd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
                try:
                    self._apply_fd_meta(dfd, m)
                    if was_whiteout:
                        self._set_opaque(dfd, m.name)
                finally:
                    os.close(dfd)
                self.dir_times[path] = self._mtime_ns(m)
            elif m.issym():
                if not m.linkname:
                    raise LayerFormatError(f"layer {self.layer}: member {m.name!r}: symlink with empty target")
                self._clear_slot(pfd, base, path, new_is_dir=False)
                # The target is stored verbatim; it is only ever resolved
                # inside the container's root, never by us.
                os.symlink(m.linkname, base, dir_fd=pfd)
                if self.preserve_owner:
                    os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
                ns = self._mtime_ns(m)
                os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
            elif m.islnk():
                self._hardlink(m, pfd, base, path)
            elif m.isfifo():
                self._clear_slot(pfd, base, path, new_is_dir=False)
                os.mkfifo(base, 0o600, dir_fd=pfd)
                self._node_meta(pfd, base, m)
            elif m.ischr() or m.isblk():
                self._device(m, pfd, base, path)
            else:
                self.result.skipped.append(f"{m.name}: unsupported tar entry type {m.type!r}")
        finally:
            os.close(pfd)

    def _node_meta(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        # fchmodat cannot refuse symlinks on Linux; the node was just created
        # by us in a directory only we write to, so following is harmless.
        if self.preserve_owner:
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
        ns = self._mtime_ns(m)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _device(self, m: tarfile.TarInfo, pfd: int, base: str, path: Path_) -> None:
        kind = "char" if m.ischr() else "block"
        if m.ischr() and m.devmajor == 0 and m.devminor == 0:
            self.result.skipped.append(f"{m.name}: 0:0 char device not created (it would act as an overlay whiteout)")
            return
        if not (self.options.allow_devices and self.root_owner):
            self.result.skipped.append(f"{m.name}: {kind} device {m.devmajor}:{m.devminor} not created (devices disabled)")
            return
        self._clear_slot(pfd, base, path, new_is_dir=False)
        fmt = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(base, fmt | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
        self._node_meta(pfd, base, m)

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, base: str, path: Path_) -> None:
        target = self._split(m.linkname, m.name) if m.linkname else ()
        if not target:
            raise HostileLayer(self.layer, m.name, f"hardlink target {m.linkname!r} is the layer root or empty")
        if target == path:
            raise LayerFormatError(f"layer {self.layer}: member {m.name!r}: hardlink to itself")
        if target in self.whiteouts:
            raise HostileLayer(self.layer, m.name, f"hardlink target {m.linkname!r} is a whiteout")
        try:
            tfd = self._open_dir(target[:-1], m.name, create=False)
        except FileNotFoundError:
            raise HostileLayer(self.layer, m.name, f"hardlink target {m.linkname!r} is not in this layer") from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise HostileLayer(self.layer, m.name, f"hardlink target {m.linkname!r} is not in this layer") from None
            if stat.S_ISDIR(st.st_mode):
                raise HostileLayer(self.layer, m.name, f"hardlink target {m.linkname!r} is a directory")
            self._clear_slot(pfd, base, path, new_is_dir=False)
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _whiteout(self, m: tarfile.TarInfo, parent: Path_, base: str) -> None:
        if base == OPAQUE_MARKER:
            dfd = self._open_dir(parent, m.name)
            try:
                self._set_opaque(dfd, m.name)
            finally:
                os.close(dfd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            self.result.skipped.append(f"{m.name}: aufs metadata ignored")
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise HostileLayer(self.layer, m.name, f"whiteout names {name!r}, not an entry")
        pfd = self._open_dir(parent, m.name)
        try:
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
                self.whiteouts.add(parent + (name,))
                return
            # The layer itself has NAME: the whiteout only hides lower layers,
            # which NAME already does, except a directory would merge.
            if stat.S_ISDIR(st.st_mode):
                dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                try:
                    self._set_opaque(dfd, m.name)
                finally:
                    os.close(dfd)
        finally:
            os.close(pfd)


def _open_blob(blob: Path | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(blob, (str, os.PathLike)):
        return open(blob, "rb"), True
    return blob, False


def unpack_layer(
    blob: Path | BinaryIO,
    dest: Path,
    *,
    layer: str = "layer",
    expected_diff_id: str | None = None,
    options: UnpackOptions = UnpackOptions(),
) -> UnpackResult:
    """Unpack a layer blob into the existing empty directory `dest` (synchronously)."""
    f, owned = _open_blob(blob)
    try:
        u = _Unpacker(f, Path(dest), layer, expected_diff_id, options)
        steps = u.run()
        try:
            for _ in steps:
                pass
        finally:
            steps.close()
        return u.result
    finally:
        if owned:
            f.close()


async def unpack_layer_async(
    blob: Path | BinaryIO,
    dest: Path,
    *,
    layer: str = "layer",
    expected_diff_id: str | None = None,
    options: UnpackOptions = UnpackOptions(),
    slice_seconds: float = 0.02,
) -> UnpackResult:
    """Like `unpack_layer`, yielding to the event loop every `slice_seconds`."""
    f, owned = _open_blob(blob)
    try:
        u = _Unpacker(f, Path(dest), layer, expected_diff_id, options)
        steps = u.run()
        try:
            deadline = time.monotonic() + slice_seconds
            for _ in steps:
                if time.monotonic() >= deadline:
                    await asyncio.sleep(0)
                    deadline = time.monotonic() + slice_seconds
        finally:
            steps.close()
        return u.result
    finally:
        if owned:
            f.close()
