"""Content store (refcounts, rm, gc, leases, crash leftovers) and overlay root filesystems."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.images import ImageInUse, ImageNotFound, ImageService, RegistryConfig, StoreError
from agent.images.rootfs import RootfsPaths, is_mounted, mount_options
from tests.fixtures.oci_build import EXPECT, TarBuilder, build_image, busybox_multi, make_layer, write_oci_layout
from tests.fixtures.registry import SeededRegistry
from tests.images import lstat_tree, store_contents

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")]

EMPTY_STORE = {"blobs", "blobs/sha256", "ingest", "snapshots", "images", "images/sha256", "leases"}


@pytest.fixture
async def svc(open_registry: SeededRegistry, tmp_path: Path) -> AsyncIterator[ImageService]:
    s = ImageService(tmp_path / "store", RegistryConfig(insecure_registries=(open_registry.addr,)))
    yield s
    # Never leave a mount behind, whatever the test did.
    for lease in s.store.list_leases():
        if is_mounted(RootfsPaths(Path(lease.container_dir)).rootfs):
            s.unmount_rootfs(lease.container_dir)
    await s.close()


async def test_rootfs_is_the_merged_view_and_release_cleans_up(
    svc: ImageService, open_registry: SeededRegistry, tmp_path: Path
) -> None:
    ref = open_registry.ref("library/busybox-multi")
    await svc.pull(ref)
    cdir = tmp_path / "containers" / "c1"
    rootfs = await svc.prepare_rootfs(ref, cdir)
    assert rootfs == cdir / "rootfs" and is_mounted(rootfs)
    for path, data in EXPECT.present.items():
        assert (rootfs / path).read_bytes() == data, path
    for path in EXPECT.absent:
        assert not os.path.lexists(rootfs / path), path  # whiteout and opaque dir applied
    assert os.listdir(rootfs / "opt/data") == ["new.txt"]
    for path, mode in EXPECT.modes.items():
        assert stat.S_IMODE((rootfs / path).stat().st_mode) == mode, path
    for path, owner in EXPECT.owners.items():
        st = (rootfs / path).stat()
        assert (st.st_uid, st.st_gid) == owner, path
    for path, target in EXPECT.symlinks.items():
        assert os.readlink(rootfs / path) == target
    name, value = EXPECT.xattrs["etc/motd"]
    assert os.getxattr(rootfs / "etc/motd", name) == value
    # The rootfs really works as a root: run busybox in it as the image's user.
    out = subprocess.run(
        ["chroot", "--userspec=1000:1000", str(rootfs), "/bin/sh", "-c", "id -u; cat /opt/data/new.txt; ls /etc"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1000" and lines[1] == "new content from layer 2" and "removed-later" not in out.stdout
    # Writes land in the container's upper dir, never in the shared layers.
    (rootfs / "etc/hostname").write_text("c1\n")
    (rootfs / "etc/passwd").unlink()
    assert (cdir / "upper/etc/hostname").read_text() == "c1\n"
    img = svc.inspect(ref)
    assert (svc.store.snapshot_fs(img.layers[0].chain_id) / "etc/passwd").exists()
    assert svc.inspect(ref).containers == 1 and svc.inspect(ref).refcount == 2

    svc.release_rootfs(cdir)
    assert not is_mounted(rootfs)
    assert os.listdir(cdir) == []
    assert svc.store.list_leases() == []
    assert svc.inspect(ref).containers == 0


async def test_stop_and_restart_keeps_the_upper_dir(svc: ImageService, open_registry: SeededRegistry, tmp_path: Path) -> None:
    ref = open_registry.ref("library/busybox-multi")
    await svc.pull(ref)
    cdir = tmp_path / "c"
    rootfs = await svc.prepare_rootfs(ref, cdir)
    assert await svc.prepare_rootfs(ref, cdir) == rootfs  # idempotent while mounted
    (rootfs / "state").write_text("kept")
    svc.unmount_rootfs(cdir)
    assert not is_mounted(rootfs) and len(svc.store.list_leases()) == 1
    rootfs = await svc.prepare_rootfs(ref, cdir)
    assert (rootfs / "state").read_text() == "kept"
    svc.release_rootfs(cdir)


async def test_matches_umoci_unpack(svc: ImageService, open_registry: SeededRegistry, tmp_path: Path) -> None:
    """Cross-check: our overlay view equals umoci's unpack of the same image."""
    ref = open_registry.ref("library/busybox-multi")
    await svc.pull(ref)
    layout = write_oci_layout(tmp_path / "layout", [("latest", busybox_multi())])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True, capture_output=True, timeout=60)
    rootfs = await svc.prepare_rootfs(ref, tmp_path / "c")
    try:
        ours, theirs = lstat_tree(rootfs), lstat_tree(bundle / "rootfs")
        assert set(ours) == set(theirs)
        for path, a in ours.items():
            b = theirs[path]
            assert (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid), path
            if stat.S_ISREG(a.st_mode):
                assert (rootfs / path).read_bytes() == (bundle / "rootfs" / path).read_bytes(), path
                assert int(a.st_mtime) == int(b.st_mtime), path
            elif stat.S_ISLNK(a.st_mode):
                assert os.readlink(rootfs / path) == os.readlink(bundle / "rootfs" / path)
    finally:
        svc.release_rootfs(tmp_path / "c")
        shutil.rmtree(bundle, ignore_errors=True)


async def test_many_layers_fit_the_mount_data_limit(svc: ImageService, open_registry: SeededRegistry, tmp_path: Path) -> None:
    n = 70
    layers = []
    for i in range(n):
        t = TarBuilder().file(f"layers/{i:03d}", f"{i}\n")
        if i:
            t.whiteout(f"gone/{i - 1:03d}")
        t.file(f"gone/{i:03d}", "x")
        layers.append(make_layer(t))
    img = build_image(layers, {"Cmd": ["/bin/true"]})
    open_registry.registry.pusher().push_image("many/layers", "latest", img)
    ref = open_registry.ref("many/layers")
    await svc.pull(ref)
    # With absolute snapshot paths the options would not fit in one page.
    abs_len = sum(len(str(svc.store.snapshot_fs(l.chain_id))) + 1 for l in svc.inspect(ref).layers)
    assert abs_len > 4096 and len(mount_options(n)) < 1024
    rootfs = await svc.prepare_rootfs(ref, tmp_path / ("deep-container-dir-name-" * 3))
    try:
        assert sorted(os.listdir(rootfs / "layers")) == [f"{i:03d}" for i in range(n)]
        assert os.listdir(rootfs / "gone") == [f"{n - 1:03d}"]  # every lower one whited out by the next
    finally:
        svc.release_rootfs(tmp_path / ("deep-container-dir-name-" * 3))


async def test_refcounts_remove_and_gc(svc: ImageService, open_registry: SeededRegistry, tmp_path: Path) -> None:
    oci_ref = open_registry.ref("library/busybox-multi:latest")
    docker_ref = open_registry.ref("library/busybox-multi:docker")
    alias_ref = open_registry.ref("library/busybox-multi:index")  # same manifest as :latest, via an index
    oci = await svc.pull(oci_ref)
    docker = await svc.pull(docker_ref)
    alias = await svc.pull(alias_ref)
    assert alias.manifest_digest == oci.manifest_digest and oci.names == (oci_ref,)
    assert svc.inspect(oci_ref).names == (alias_ref, oci_ref)
    counts = svc.store.refcounts()
    layer = oci.layers[0]
    # Shared by the OCI record (two names) and the Docker record.
    assert counts[layer.digest] == 2 and counts[layer.chain_id] == 2 and counts[oci.manifest_digest] == 1

    # Removing by ID with two names is refused; by name it untags only.
    with pytest.raises(ImageInUse, match="referenced by 2 names"):
        svc.remove(oci.manifest_digest)
    res = svc.remove(alias_ref)
    assert res.untagged == [alias_ref] and res.deleted_blobs == [] and res.deleted_snapshots == []
    # The index blob is still held (the image is), and goes with the image.
    res = svc.remove(oci_ref)
    assert alias.index_digests and set(res.deleted_blobs) == {oci.manifest_digest, *alias.index_digests}
    assert res.deleted_snapshots == []  # still used by the Docker-manifest image
    with pytest.raises(ImageNotFound, match="no such image"):
        svc.inspect(oci_ref)

    # A container holds the image: rm is refused; force untags but keeps the layers.
    cdir = tmp_path / "c"
    await svc.prepare_rootfs(docker_ref, cdir)
    with pytest.raises(ImageInUse, match="used by 1 container"):
        svc.remove(docker_ref)
    svc.remove(docker_ref, force=True)
    assert svc.list() == [svc.inspect(docker.id)]  # dangling, held by the container
    assert svc.inspect(docker.id).names == () and svc.inspect(docker.id).containers == 1
    assert svc.gc().snapshots == []
    assert is_mounted(cdir / "rootfs") and (cdir / "rootfs/bin/busybox").exists()
    svc.release_rootfs(cdir)
    gc = svc.gc()
    assert set(gc.snapshots) == {l.chain_id for l in docker.layers}
    assert gc.images == [docker.manifest_digest]
    assert svc.list() == [] and svc.store.refs() == {}
    assert store_contents(svc.store.root) == EMPTY_STORE | {"refs.json"}


async def test_gc_removes_crash_leftovers_and_store_is_locked(open_registry: SeededRegistry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    svc = ImageService(root)
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            ImageService(root)
        (root / "ingest" / "half-download").write_bytes(b"x" * 100)
        (root / "snapshots" / ".tmp-deadbeef" / "fs").mkdir(parents=True)
        (root / "blobs" / "sha256" / ("ab" * 32)).write_bytes(b"unreferenced")
        gc = svc.gc()
        assert gc.blobs == ["sha256:" + "ab" * 32]
        assert store_contents(root) == EMPTY_STORE
    finally:
        await svc.close()
    # Leftovers from a crash are also cleared when the store is opened.
    (root / "ingest" / "half-download").write_bytes(b"x")
    (root / "snapshots" / ".trash-1").mkdir()
    svc = ImageService(root)
    await svc.close()
    assert store_contents(root) == EMPTY_STORE
