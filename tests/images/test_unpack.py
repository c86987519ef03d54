"""Layer unpack on real files: semantics of the busybox-multi layers, compressions, and hostile tars."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent.images.errors import DigestMismatch, HostileLayer, LayerFormatError
from agent.images.unpack import UnpackOptions, unpack_layer, unpack_layer_async
from tests.fixtures.oci_build import BUSYBOX, EXPECT, TarBuilder, busybox_multi_layers, make_layer
from tests.images import lstat_tree

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and ownership need root")]


def _unpack(tmp_path: Path, tar: bytes | TarBuilder, name: str = "fs", **kw: object) -> tuple[Path, object]:
    dest = tmp_path / name
    dest.mkdir()
    raw = tar.build() if isinstance(tar, TarBuilder) else tar
    res = unpack_layer(io.BytesIO(raw), dest, layer="sha256:test", **kw)  # type: ignore[arg-type]
    return dest, res


def test_busybox_multi_layers(tmp_path: Path) -> None:
    l1, l2 = busybox_multi_layers()
    d1 = tmp_path / "l1"
    d1.mkdir()
    r1 = unpack_layer(io.BytesIO(l1.blob.data), d1, layer=l1.blob.digest, expected_diff_id=l1.diff_id)
    assert r1.compression == "gzip" and r1.diff_id == l1.diff_id
    assert (d1 / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.readlink(d1 / "bin/sh") == "busybox"
    # Hardlink within the layer: same inode.
    assert (d1 / "bin/busybox-hardlink").stat().st_ino == (d1 / "bin/busybox").stat().st_ino
    assert stat.S_IMODE((d1 / "tmp").stat().st_mode) == 0o1777
    st = (d1 / "home/app").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750)
    assert (d1 / "etc/removed-later").is_file()
    assert int((d1 / "etc/passwd").stat().st_mtime) == 1_700_000_000
    # Directory mtimes survive the files written into them afterwards.
    assert int((d1 / "etc").stat().st_mtime) == 1_700_000_000

    d2 = tmp_path / "l2"
    d2.mkdir()
    r2 = unpack_layer(io.BytesIO(l2.blob.data), d2, layer=l2.blob.digest, expected_diff_id=l2.diff_id)
    wh = (d2 / "etc/removed-later").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)  # overlay whiteout
    assert not (d2 / "etc/.wh.removed-later").exists()
    assert os.getxattr(d2 / "opt/data", "trusted.overlay.opaque") == b"y"
    assert not (d2 / "opt/data/.wh..wh..opq").exists()
    assert os.listdir(d2 / "opt/data") == ["new.txt"]
    new = (d2 / "opt/data/new.txt").stat()
    assert (new.st_uid, new.st_gid, stat.S_IMODE(new.st_mode)) == (1000, 1000, 0o640)
    assert stat.S_IMODE((d2 / "bin/suid-true").stat().st_mode) == 0o4755
    name, value = EXPECT.xattrs["etc/motd"]
    assert os.getxattr(d2 / "etc/motd", name) == value
    assert int((d2 / "etc/motd").stat().st_mtime) == 1_600_000_000
    assert r2.entries == 7


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
async def test_compressions_give_identical_trees(tmp_path: Path, compression: str) -> None:
    tar = TarBuilder().dir("d", mode=0o700).file("d/f", b"x" * 3_000_000, mode=0o600).symlink("l", "d/f")
    layer = make_layer(tar, compression)
    dest = tmp_path / "fs"
    dest.mkdir()
    res = await unpack_layer_async(io.BytesIO(layer.blob.data), dest, layer="x", expected_diff_id=layer.diff_id)
    assert res.compression == compression and res.size == 3_000_000
    assert (dest / "d/f").read_bytes() == b"x" * 3_000_000
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o700
    assert os.readlink(dest / "l") == "d/f"


async def test_async_unpack_yields_to_the_loop(tmp_path: Path) -> None:
    tar = TarBuilder()
    for i in range(3000):
        tar.file(f"many/f{i}", b"y" * 100)
    dest = tmp_path / "fs"
    dest.mkdir()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    t = asyncio.create_task(ticker())
    await unpack_layer_async(io.BytesIO(tar.build()), dest, layer="x", slice_seconds=0.001)
    t.cancel()
    assert len(os.listdir(dest / "many")) == 3000
    assert ticks > 3  # the loop ran other work while unpacking


def test_whiteout_and_entry_in_same_layer(tmp_path: Path) -> None:
    # A whiteout hides lower layers only; this layer's own entries stay.
    tar = (
        TarBuilder().whiteout("a").file("a", "kept").dir("d").file("d/x", "x").whiteout("d")
        .whiteout("e").dir("e").file("e/y", "y")
    )
    dest, _ = _unpack(tmp_path, tar)
    assert (dest / "a").read_text() == "kept"
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"  # recreated dir hides the lower one
    assert os.getxattr(dest / "e", "trusted.overlay.opaque") == b"y"
    assert (dest / "e/y").read_text() == "y"


def test_duplicate_entries_last_wins(tmp_path: Path) -> None:
    tar = TarBuilder().file("f", "one").file("f", "two").dir("d").file("d/x", "x").file("d", "now a file")
    dest, _ = _unpack(tmp_path, tar)
    assert (dest / "f").read_text() == "two"
    assert (dest / "d").read_text() == "now a file"


def test_diff_id_mismatch_and_corrupt_streams(tmp_path: Path) -> None:
    layer = make_layer(TarBuilder().file("f", "data"), "gzip")
    with pytest.raises(DigestMismatch) as e:
        _unpack(tmp_path, layer.blob.data, "a", expected_diff_id="sha256:" + "0" * 64)
    assert "diff_id" in str(e.value) and layer.diff_id in str(e.value)
    with pytest.raises(LayerFormatError, match="corrupt gzip stream"):
        _unpack(tmp_path, layer.blob.data[:-12] + b"\0" * 12, "b")
    zst = make_layer(TarBuilder().file("f", os.urandom(300_000)), "zstd").blob.data
    for broken in (zst[:-5], zst[:-1000], zst + b"junk", zst[:4] + b"\x08" + zst[5:]):
        with pytest.raises(LayerFormatError, match="corrupt zstd stream"):
            _unpack(tmp_path, broken, f"c{len(os.listdir(tmp_path))}")
    # Several frames and a skippable frame are fine.
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"
    tar = TarBuilder().file("g", "1").build()
    multi = zstandard.ZstdCompressor().compress(tar[:512]) + skippable + zstandard.ZstdCompressor().compress(tar[512:])
    dest, _ = _unpack(tmp_path, multi, "multi")
    assert (dest / "g").read_text() == "1"
    with pytest.raises(LayerFormatError):
        _unpack(tmp_path, b"this is not a tar archive at all" * 40, "d")
    truncated = TarBuilder().file("f", b"z" * 10_000).build()[:3000]
    with pytest.raises(LayerFormatError, match="'f'"):
        _unpack(tmp_path, truncated, "e")


# --- hostile layers ------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the layer that must never be touched."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_text("original")
    return d


def _assert_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "original"
    assert (outside / "victim").stat().st_nlink == 1


@pytest.mark.parametrize(
    "build, member, reason",
    [
        (lambda o: TarBuilder().raw("../outside/pwned", data=b"x"), "../outside/pwned", "climbs out"),
        (lambda o: TarBuilder().raw("a/../../outside/pwned", data=b"x"), "a/../../outside/pwned", "climbs out"),
        (lambda o: TarBuilder().symlink("link", str(o)).raw("link/pwned", data=b"x"), "link/pwned", "parent 'link' is a symlink"),
        (lambda o: TarBuilder().symlink("up", "..").raw("up/outside/pwned", data=b"x"), "up/outside/pwned", "parent 'up' is a symlink"),
        (lambda o: TarBuilder().dir("d").symlink("d", str(o)).raw("d/pwned", data=b"x"), "d/pwned", "parent 'd' is a symlink"),
        (lambda o: TarBuilder().symlink("s", str(o)).raw("s/.wh..wh..opq"), "s/.wh..wh..opq", "symlink"),
        (lambda o: TarBuilder().symlink("s", str(o)).raw("s/.wh.victim"), "s/.wh.victim", "symlink"),
        (lambda o: TarBuilder().raw("dir/.wh...", data=b""), "dir/.wh...", "whiteout names '..'"),
        (lambda o: TarBuilder().raw("hl", tarfile.LNKTYPE, linkname="../outside/victim"), "hl", "climbs out"),
        (lambda o: TarBuilder().raw("hl", tarfile.LNKTYPE, linkname=str(o / "victim")), "hl", "not in this layer"),
        (lambda o: TarBuilder().symlink("s", str(o)).raw("hl", tarfile.LNKTYPE, linkname="s/victim"), "hl", "parent 's' is a symlink"),
        (lambda o: TarBuilder().dir("d").raw("hl", tarfile.LNKTYPE, linkname="d"), "hl", "is a directory"),
        (lambda o: TarBuilder().raw("hl", tarfile.LNKTYPE, linkname=""), "hl", "layer root or empty"),
        (lambda o: TarBuilder().raw("nul\x00byte", data=b"x"), "nul", "NUL"),
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, outside: Path, build, member: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "fs"
    dest.mkdir()
    tar = build(outside).build()
    with pytest.raises(HostileLayer) as e:
        unpack_layer(io.BytesIO(tar), dest, layer="sha256:hostile")
    assert member.split("\x00")[0] in e.value.member
    assert reason in str(e.value)
    assert "sha256:hostile" in str(e.value)
    _assert_untouched(outside)


def test_absolute_paths_are_neutralised_into_the_layer(tmp_path: Path, outside: Path) -> None:
    target = outside / "abs-pwned"
    tar = TarBuilder().raw(str(target), data=b"x").raw("/etc/orch-abs-test", data=b"y")
    dest, _ = _unpack(tmp_path, tar)
    assert (dest / str(target).lstrip("/")).read_bytes() == b"x"
    assert (dest / "etc/orch-abs-test").read_bytes() == b"y"
    assert not Path("/etc/orch-abs-test").exists()
    _assert_untouched(outside)


def test_existing_symlink_is_replaced_not_followed(tmp_path: Path, outside: Path) -> None:
    tar = TarBuilder().symlink("f", str(outside / "victim")).file("f", "new content")
    dest, _ = _unpack(tmp_path, tar)
    assert not (dest / "f").is_symlink() and (dest / "f").read_text() == "new content"
    _assert_untouched(outside)


def test_symlink_targets_are_stored_verbatim_not_resolved(tmp_path: Path, outside: Path) -> None:
    tar = TarBuilder().symlink("escape", "../../../../" + str(outside / "victim")).symlink("abs", "/etc/shadow")
    dest, _ = _unpack(tmp_path, tar)
    assert os.readlink(dest / "escape").endswith("outside/victim")
    assert os.readlink(dest / "abs") == "/etc/shadow"
    _assert_untouched(outside)


def test_hardlink_to_symlink_links_the_symlink_itself(tmp_path: Path, outside: Path) -> None:
    tar = TarBuilder().symlink("s", str(outside / "victim")).hardlink("h", "s")
    dest, _ = _unpack(tmp_path, tar)
    assert os.readlink(dest / "h") == str(outside / "victim")
    _assert_untouched(outside)


def test_device_nodes_are_skipped_unless_allowed(tmp_path: Path) -> None:
    tar = TarBuilder().device("dev/null", "char", 1, 3).device("dev/sda", "block", 8, 0).device("zero-zero", "char", 0, 0).fifo("pipe", 0o620)
    dest, res = _unpack(tmp_path, tar, "a")
    assert not (dest / "dev/null").exists() and not (dest / "dev/sda").exists() and not (dest / "zero-zero").exists()
    assert stat.S_ISFIFO((dest / "pipe").lstat().st_mode) and stat.S_IMODE((dest / "pipe").lstat().st_mode) == 0o620
    assert any("dev/sda" in s and "block device 8:0" in s for s in res.skipped)  # type: ignore[attr-defined]
    dest, res = _unpack(tmp_path, tar, "b", options=UnpackOptions(allow_devices=True))
    assert (dest / "dev/null").lstat().st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((dest / "dev/sda").lstat().st_mode)
    assert not (dest / "zero-zero").exists()  # would be read as an overlay whiteout


def test_untrusted_xattrs_are_dropped(tmp_path: Path) -> None:
    tar = TarBuilder().dir("d").file("d/f", "x", xattrs={"trusted.overlay.opaque": b"y", "user.ok": b"1", "security.selinux": b"x"})
    dest, res = _unpack(tmp_path, tar)
    assert os.getxattr(dest / "d/f", "user.ok") == b"1"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "d/f")
    assert "security.selinux" not in " ".join(os.listxattr(dest / "d/f")) or os.getxattr(dest / "d/f", "security.selinux") != b"x"
    assert any("trusted.overlay.opaque dropped" in s for s in res.skipped)  # type: ignore[attr-defined]


def test_parent_that_is_a_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(LayerFormatError, match="parent 'f' is not a directory"):
        _unpack(tmp_path, TarBuilder().file("f", "x").file("f/g", "y"))


def test_tree_is_only_inside_dest(tmp_path: Path, outside: Path) -> None:
    # A mixed, legitimate layer with tricky-but-valid names stays inside dest.
    tar = (
        TarBuilder().raw("./a/./b/../c", data=b"1").raw("//double//slash", data=b"2").file("sp ace/ü-ñ", "3")
        .symlink("loop", "loop").dir("x/y/z")
    )
    dest, _ = _unpack(tmp_path, tar)
    tree = lstat_tree(dest)
    assert {"a/c", "double/slash", "sp ace/ü-ñ", "loop", "x/y/z"} <= set(tree)
    _assert_untouched(outside)
