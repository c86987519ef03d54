"""Bad input from a registry: every case is a clear error and leaves nothing partial in the store.

A real registry refuses to store most of these, so they are served by the
in-process FakeRegistry (tests/fixtures/registry.py); the same client code
talks to the real registry in test_pull.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.images import (
    BlobSizeMismatch,
    BlobTruncated,
    BlobUnknown,
    DigestMismatch,
    ImageService,
    MalformedConfig,
    MalformedManifest,
    RegistryConfig,
    RegistryError,
    UnsupportedMediaType,
)
from tests.fixtures.oci_build import (
    OCI_MANIFEST,
    Blob,
    BuiltImage,
    TarBuilder,
    build_image,
    build_index,
    busybox_multi,
    canonical_json,
    make_layer,
    small_image,
)
from tests.fixtures.registry import FakeRegistry
from tests.images import store_contents

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="unpacking whiteouts needs root")]

REPO = "test/img"


@pytest.fixture
async def svc(fake_registry: FakeRegistry, tmp_path: Path) -> AsyncIterator[ImageService]:
    s = ImageService(
        tmp_path / "store",
        RegistryConfig(insecure_registries=(fake_registry.addr,), attempts=3, backoff_initial=0.01, backoff_max=0.02),
    )
    yield s
    await s.close()


def ref(fake: FakeRegistry, tag: str = "latest") -> str:
    if "@" in tag:
        return f"{fake.addr}/{REPO}@{tag.split('@', 1)[1]}"
    return f"{fake.addr}/{REPO}:{tag}"


async def expect_failure(svc: ImageService, fake: FakeRegistry, exc: type[Exception], *fragments: str, tag: str = "latest") -> Exception:
    """Pull, expect `exc` with every fragment in its message, and an unchanged store."""
    before = store_contents(svc.store.root)
    refs_before = svc.store.refs()
    with pytest.raises(exc) as e:
        await svc.pull(ref(fake, tag))
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))
    assert store_contents(svc.store.root) == before
    assert svc.store.refs() == refs_before
    assert svc._pins == {}  # nothing still pinned by the failed pull
    return e.value


def two_layer_image() -> BuiltImage:
    base = make_layer(TarBuilder().file("base", "b" * 5000))
    top = make_layer(TarBuilder().file("top", "t" * 5000))
    return build_image([base, top], {"Cmd": ["/top"]})


async def test_malformed_manifest(svc: ImageService, fake_registry: FakeRegistry) -> None:
    fake_registry.put_manifest(REPO, "latest", b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": ', OCI_MANIFEST)
    await expect_failure(svc, fake_registry, MalformedManifest, f"manifest {fake_registry.addr}/{REPO}:latest", "not valid JSON")
    fake_registry.put_manifest(REPO, "latest", canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}), OCI_MANIFEST)
    await expect_failure(svc, fake_registry, MalformedManifest, "missing field 'config'")


async def test_unknown_media_types(svc: ImageService, fake_registry: FakeRegistry) -> None:
    fake_registry.put_manifest(REPO, "latest", canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.example.thing.v1+json"}), "application/vnd.example.thing.v1+json")
    await expect_failure(svc, fake_registry, UnsupportedMediaType, "application/vnd.example.thing.v1+json")
    fake_registry.put_manifest(REPO, "latest", b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', "application/vnd.docker.distribution.manifest.v1+prettyjws")
    await expect_failure(svc, fake_registry, UnsupportedMediaType, "schema 1")
    img = build_image([make_layer(TarBuilder().file("f", "x"))], layer_media_types=["application/vnd.example.weird.layer"])
    fake_registry.add_image(REPO, "latest", img)
    await expect_failure(svc, fake_registry, UnsupportedMediaType, "'application/vnd.example.weird.layer'", img.layers[0].blob.digest)


async def test_manifest_digest_mismatch(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    # Asked for by digest, served other bytes.
    fake_registry.put_manifest(REPO, img.digest, small_image("other").manifest.data, OCI_MANIFEST)
    await expect_failure(svc, fake_registry, DigestMismatch, f"manifest {fake_registry.addr}/{REPO}@{img.digest}", tag=f"ignored@{img.digest}")
    # Asked for by tag, with a Docker-Content-Digest header that does not match the body.
    fake_registry.digest_headers[(REPO, "latest")] = "sha256:" + "d" * 64
    await expect_failure(svc, fake_registry, DigestMismatch, "Docker-Content-Digest", "sha256:" + "d" * 64, img.digest)


async def test_index_entry_with_wrong_size(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = busybox_multi()
    idx = build_index([img])
    obj = json.loads(idx.index.data)
    obj["manifests"][0]["size"] += 1
    bad_index = Blob(idx.index.media_type, canonical_json(obj))
    fake_registry.add_image(REPO, img.digest, img)
    fake_registry.put_manifest(REPO, "latest", bad_index.data, bad_index.media_type)
    await expect_failure(svc, fake_registry, BlobSizeMismatch, img.digest)


@pytest.mark.parametrize("which", ["config", "base", "top"])
async def test_blob_with_wrong_content(svc: ImageService, fake_registry: FakeRegistry, which: str) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    target = {"config": img.config, "base": img.layers[0].blob, "top": img.layers[1].blob}[which]
    data = bytearray(target.data)
    data[len(data) // 2] ^= 0xFF
    fake_registry.blobs[target.digest] = bytes(data)
    e = await expect_failure(svc, fake_registry, DigestMismatch, target.digest, "expected")
    assert isinstance(e, DigestMismatch) and e.expected == target.digest


async def test_truncated_blob_is_retried_then_reported(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    layer = img.layers[1].blob
    fake_registry.truncate[layer.digest] = layer.size // 2
    e = await expect_failure(svc, fake_registry, BlobTruncated, layer.digest, f"expected {layer.size} bytes")
    assert isinstance(e, BlobTruncated) and e.actual == layer.size // 2
    assert fake_registry.requests.count(("GET", f"/v2/{REPO}/blobs/{layer.digest}")) == 3  # attempts=3


async def test_blob_larger_than_descriptor(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    layer = img.layers[0].blob
    fake_registry.blobs[layer.digest] = layer.data + b"\0" * 1000
    await expect_failure(svc, fake_registry, BlobSizeMismatch, layer.digest, f"expected {layer.size} bytes")


async def test_missing_blob(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    del fake_registry.blobs[img.layers[1].blob.digest]
    await expect_failure(svc, fake_registry, BlobUnknown, img.layers[1].blob.digest, REPO)


async def test_diff_id_mismatch(svc: ImageService, fake_registry: FakeRegistry) -> None:
    good = two_layer_image()
    wrong = "sha256:" + "e" * 64
    img = build_image(list(good.layers), {"Cmd": ["/top"]}, diff_ids=[good.layers[0].diff_id, wrong])
    fake_registry.add_image(REPO, "latest", img)
    await expect_failure(svc, fake_registry, DigestMismatch, "diff_id", wrong, good.layers[1].diff_id)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["rootfs"]["diff_ids"].pop(), "1 diff_ids for 2 layers"),
        (lambda c: c["config"].__setitem__("Env", "PATH=/bin"), "config.Env must be a list of strings"),
        (lambda c: c.__setitem__("rootfs", {"type": "layers", "diff_ids": ["md5:abc"]}), "rootfs.diff_ids[0]"),
    ],
)
async def test_malformed_config(svc: ImageService, fake_registry: FakeRegistry, mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    good = two_layer_image()
    cfg = json.loads(good.config.data)
    mutate(cfg)
    config = Blob(good.config.media_type, canonical_json(cfg))
    manifest = json.loads(good.manifest.data)
    manifest["config"] = config.descriptor()
    img = BuiltImage(Blob(OCI_MANIFEST, canonical_json(manifest)), config, good.layers, "linux", good.architecture, good.variant)
    fake_registry.add_image(REPO, "latest", img)
    await expect_failure(svc, fake_registry, MalformedConfig, fragment, config.digest)


async def test_server_errors_are_retried(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    manifest_path = f"/v2/{REPO}/manifests/latest"
    fake_registry.fail[manifest_path] = [503, 502]
    fake_registry.fail[f"/v2/{REPO}/blobs/{img.layers[0].blob.digest}"] = [500]
    pulled = await svc.pull(ref(fake_registry))
    assert pulled.manifest_digest == img.digest
    assert fake_registry.requests.count(("GET", manifest_path)) == 3
    # ... but not forever.
    fake_registry.fail[f"/v2/{REPO}/manifests/v2"] = [503] * 10
    fake_registry.put_manifest(REPO, "v2", img.manifest.data, OCI_MANIFEST)
    await expect_failure(svc, fake_registry, RegistryError, "HTTP 503 after 3 attempts", fake_registry.addr, tag="v2")


async def test_failed_pull_keeps_content_of_other_images(svc: ImageService, fake_registry: FakeRegistry) -> None:
    good = two_layer_image()
    fake_registry.add_image(REPO, "good", good)
    await svc.pull(ref(fake_registry, "good"))
    # A second image shares the base layer; its own top layer is corrupt.
    bad_top = make_layer(TarBuilder().file("other", "o" * 3000))
    bad = build_image([good.layers[0], bad_top], {"Cmd": ["/other"]})
    fake_registry.add_image(REPO, "bad", bad)
    fake_registry.blobs[bad_top.blob.digest] = bad_top.blob.data[:-1] + b"!"
    await expect_failure(svc, fake_registry, DigestMismatch, bad_top.blob.digest, tag="bad")
    # The shared base layer (blob and snapshot) survived the rollback.
    img = svc.inspect(ref(fake_registry, "good"))
    assert all(svc.store.has_blob(l.digest) and svc.store.has_snapshot(l.chain_id) for l in img.layers)


async def test_dropped_connection_is_retried_from_zero(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    layer = img.layers[0].blob
    fake_registry.truncate[layer.digest] = layer.size // 3
    fake_registry.truncate_times[layer.digest] = 1
    pulled = await svc.pull(ref(fake_registry))
    assert svc.store.blob_path(layer.digest).read_bytes() == layer.data
    assert pulled.layers[0].digest == layer.digest
    assert fake_registry.requests.count(("GET", f"/v2/{REPO}/blobs/{layer.digest}")) == 2


async def test_cancelled_pull_leaves_nothing(svc: ImageService, fake_registry: FakeRegistry) -> None:
    img = two_layer_image()
    fake_registry.add_image(REPO, "latest", img)
    fake_registry.stall[img.layers[1].blob.digest] = 30.0
    before = store_contents(svc.store.root)
    task = asyncio.create_task(svc.pull(ref(fake_registry)))
    # Wait until the stalled layer is half written into ingest/.
    for _ in range(500):
        if os.listdir(svc.store.ingest_dir):
            break
        await asyncio.sleep(0.01)
    assert os.listdir(svc.store.ingest_dir)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The shared inner work unwinds on its own tasks; give it a moment.
    for _ in range(200):
        if not svc._pull_flight.keys() and not svc._blob_flight.keys():
            break
        await asyncio.sleep(0.01)
    assert store_contents(svc.store.root) == before
    assert svc._pins == {}
