"""Pulls from real Distribution registries: open, basic auth, Bearer token, TLS; sharing, progress, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.images import (
    AuthError,
    HostileLayer,
    ImageService,
    ManifestUnknown,
    NoMatchingPlatform,
    RegistryConfig,
    RegistryUnreachable,
    RepositoryUnknown,
    Status,
)
from agent.images.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from tests.fixtures.oci_build import (
    BUSYBOX_MULTI_CONFIG,
    BuiltImage,
    BuiltIndex,
    TarBuilder,
    build_image,
    busybox_multi,
    make_layer,
    write_oci_layout,
)
from tests.fixtures.registry import USERS, CountingProxy, SeededRegistry, free_port
from tests.images import store_contents

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="unpacking whiteouts needs root")]

EMPTY_STORE = {"blobs", "blobs/sha256", "ingest", "snapshots", "images", "images/sha256", "leases"}
FAST = dict(backoff_initial=0.01, backoff_max=0.05, connect_timeout=2.0, read_timeout=5.0)

MakeService = Callable[..., ImageService]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[MakeService]:
    made: list[ImageService] = []

    def make(*insecure: str, name: str = "store", **cfg: object) -> ImageService:
        config = RegistryConfig(insecure_registries=tuple(insecure), **{**FAST, **cfg})  # type: ignore[arg-type]
        svc = ImageService(tmp_path / name, config)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        await svc.close()


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    p = tmp_path / "docker-config.json"
    p.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    return p


def seeded_manifest(reg: SeededRegistry, name: str) -> BuiltImage:
    item = reg.seeded.images[name]
    return item.images[-1] if isinstance(item, BuiltIndex) else item


async def test_pull_oci_image_from_open_registry(open_registry: SeededRegistry, make_service: MakeService) -> None:
    svc = make_service(open_registry.addr)
    ref = open_registry.ref("library/busybox-multi:latest")
    img = await svc.pull(ref)
    built = seeded_manifest(open_registry, "library/busybox-multi:latest")
    assert img.names == (ref,)
    assert img.manifest_digest == built.digest == open_registry.seeded.digests["library/busybox-multi:latest"]
    assert img.manifest_media_type == OCI_MANIFEST
    assert img.id == built.config.digest
    assert [l.digest for l in img.layers] == [l.blob.digest for l in built.layers]
    assert [l.diff_id for l in img.layers] == [l.diff_id for l in built.layers]
    # The content really is in the store, verified, and unpacked per chain ID.
    for blob in [built.manifest, *built.blobs()]:
        assert svc.store.blob_path(blob.digest).read_bytes() == blob.data
    assert [svc.store.has_snapshot(l.chain_id) for l in img.layers] == [True, True]
    assert svc.image_config(ref) == BUSYBOX_MULTI_CONFIG
    assert [i.names for i in svc.list()] == [(ref,)]
    # inspect by name, familiar-ish name, image ID prefix and repo@digest
    assert svc.inspect(ref) == img
    assert svc.inspect(img.id[7:19]) == img
    assert svc.inspect(f"{open_registry.addr}/library/busybox-multi@{img.manifest_digest}") == img


@pytest.mark.parametrize(
    "tag, media_type, n_layers, via_index",
    [
        ("docker", DOCKER_MANIFEST, 2, False),
        ("zstd", OCI_MANIFEST, 3, False),
        ("index", OCI_MANIFEST, 2, True),
        ("list", DOCKER_MANIFEST, 2, True),
    ],
)
async def test_pull_schema2_zstd_index_and_manifest_list(
    open_registry: SeededRegistry, make_service: MakeService, tag: str, media_type: str, n_layers: int, via_index: bool
) -> None:
    svc = make_service(open_registry.addr)
    ref = open_registry.ref(f"library/busybox-multi:{tag}")
    img = await svc.pull(ref)
    assert img.manifest_media_type == media_type
    assert len(img.layers) == n_layers
    if via_index:
        index_digest = open_registry.seeded.digests[f"library/busybox-multi:{tag}"]
        assert img.index_digests == (index_digest,)
        assert svc.store.has_blob(index_digest)
        # The linux/<host arch> entry was chosen, not the foreign one or the attestation.
        assert img.manifest_digest == seeded_manifest(open_registry, f"library/busybox-multi:{tag}").digest
    assert svc.image_config(ref)["User"] == "app"
    if tag == "zstd":
        metas = [svc.store.snapshot_meta(l.chain_id) for l in img.layers]
        assert [m["compression"] for m in metas] == ["zstd", "zstd", "none"]


async def test_no_platform_match_leaves_nothing(open_registry: SeededRegistry, make_service: MakeService) -> None:
    svc = make_service(open_registry.addr)
    before = store_contents(svc.store.root)
    with pytest.raises(NoMatchingPlatform) as e:
        await svc.pull(open_registry.ref("noarch/foreign"))
    assert "s390x" in str(e.value) or "riscv64" in str(e.value)
    assert store_contents(svc.store.root) == before


async def test_missing_tag_and_repository(open_registry: SeededRegistry, make_service: MakeService) -> None:
    svc = make_service(open_registry.addr)
    before = store_contents(svc.store.root)
    with pytest.raises(ManifestUnknown) as e:
        await svc.pull(open_registry.ref("library/busybox-multi:nope"))
    assert str(e.value).startswith(f"repository library/busybox-multi has no tag nope at {open_registry.addr}")
    with pytest.raises(RepositoryUnknown) as e2:
        await svc.pull(open_registry.ref("no/such-repo:latest"))
    assert f"repository no/such-repo not found at {open_registry.addr}" in str(e2.value)
    missing = "sha256:" + "0" * 64
    with pytest.raises(ManifestUnknown, match=f"has no digest {missing}"):
        await svc.pull(open_registry.ref(f"library/busybox-multi@{missing}"))
    assert store_contents(svc.store.root) == before


async def test_unreachable_registry(make_service: MakeService) -> None:
    port = free_port()  # nothing listens there
    svc = make_service(f"127.0.0.1:{port}")
    with pytest.raises(RegistryUnreachable) as e:
        await svc.pull(f"127.0.0.1:{port}/library/busybox-multi")
    assert f"127.0.0.1:{port}" in str(e.value) and "refused" in str(e.value).lower()
    assert "after 4 attempts" in str(e.value)
    assert store_contents(svc.store.root) == EMPTY_STORE


async def test_plain_http_only_when_marked_insecure(open_registry: SeededRegistry, make_service: MakeService) -> None:
    svc = make_service()  # not insecure: https is attempted against a plain-http registry
    with pytest.raises(RegistryUnreachable) as e:
        await svc.pull(open_registry.ref("library/busybox-multi"))
    assert "TLS" in str(e.value) and "insecure" in str(e.value) and open_registry.addr in str(e.value)


async def test_tls_registry_needs_its_ca(tls_registry: SeededRegistry, make_service: MakeService, tmp_path: Path) -> None:
    ref = tls_registry.ref("library/busybox-multi")
    with pytest.raises(RegistryUnreachable, match="certificate verification failed"):
        await make_service(name="a").pull(ref)
    certs = tmp_path / "certs.d"
    (certs / tls_registry.addr).mkdir(parents=True)
    assert tls_registry.ca is not None
    (certs / tls_registry.addr / "ca.crt").write_bytes(tls_registry.ca.cert_path.read_bytes())
    img = await make_service(name="b", certs_dir=certs).pull(ref)
    assert img.manifest_digest == tls_registry.seeded.digests["library/busybox-multi:latest"]


async def test_basic_auth(basic_registry: SeededRegistry, make_service: MakeService, tmp_path: Path) -> None:
    ref = basic_registry.ref("private/busybox-multi")
    good = docker_config(tmp_path, basic_registry.addr, "alice", USERS["alice"])
    img = await make_service(basic_registry.addr, name="ok", auth_file=good).pull(ref)
    assert img.manifest_digest == basic_registry.seeded.digests["private/busybox-multi:latest"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"auths": {f"http://{basic_registry.addr}/": {"username": "alice", "password": "wrong"}}}))
    svc = make_service(basic_registry.addr, name="bad", auth_file=bad)
    with pytest.raises(AuthError) as e:
        await svc.pull(ref)
    assert f"authentication to registry {basic_registry.addr} failed for user 'alice'" in str(e.value)
    assert "wrong" not in str(e.value)
    assert store_contents(svc.store.root) == EMPTY_STORE

    with pytest.raises(AuthError, match="requires authentication and there are no credentials"):
        await make_service(basic_registry.addr, name="none").pull(ref)


async def test_bearer_token_flow(token_registry: SeededRegistry, make_service: MakeService, tmp_path: Path) -> None:
    server = token_registry.token_server
    assert server is not None
    # Anonymous Bearer: the token server grants pull on public/*.
    before = server.stats()
    img = await make_service(token_registry.addr, name="anon").pull(token_registry.ref("public/busybox-multi"))
    assert img.manifest_digest == token_registry.seeded.digests["public/busybox-multi:latest"]
    after = server.stats()
    # One token serves the manifest, config and both (concurrent) layer fetches.
    assert after.get("user:anonymous", 0) - before.get("user:anonymous", 0) == 1

    # Authenticated: credentials go to the token server, the token to the registry.
    cfg = docker_config(tmp_path, token_registry.addr, "alice", USERS["alice"])
    img = await make_service(token_registry.addr, name="alice", auth_file=cfg).pull(token_registry.ref("private/busybox-multi"))
    assert server.stats().get("user:alice", 0) - after.get("user:alice", 0) == 1
    assert len(img.layers) == 2

    # No credentials for a private repository: the registry refuses the (empty) token.
    with pytest.raises(AuthError) as e:
        await make_service(token_registry.addr, name="anon2").pull(token_registry.ref("private/busybox-multi"))
    assert "denied anonymous access to private/busybox-multi" in str(e.value)

    # Wrong password: the token server refuses.
    bad = docker_config(tmp_path, token_registry.addr, "alice", "not-her-password")
    svc = make_service(token_registry.addr, name="bad", auth_file=bad)
    with pytest.raises(AuthError) as e2:
        await svc.pull(token_registry.ref("private/busybox-multi"))
    assert "rejected user 'alice'" in str(e2.value) and "repository:private/busybox-multi:pull" in str(e2.value)
    assert "not-her-password" not in str(e2.value)
    assert store_contents(svc.store.root) == EMPTY_STORE


async def test_progress_is_reported_per_layer(open_registry: SeededRegistry, make_service: MakeService) -> None:
    svc = make_service(open_registry.addr)
    events = []
    img = await svc.pull(open_registry.ref("library/busybox-multi"), progress=events.append)
    assert events[0].status == Status.RESOLVING and events[-1].status == Status.DONE
    for layer in img.layers:
        mine = [e for e in events if e.id == layer.digest]
        statuses = [e.status for e in mine]
        assert statuses[0] == Status.WAITING and statuses[-1] == Status.EXTRACTED
        assert Status.DOWNLOADED in statuses and Status.EXTRACTING in statuses
        downloading = [e.current for e in mine if e.status == Status.DOWNLOADING]
        assert downloading == sorted(downloading) and downloading[-1] == layer.size
        assert all(e.total == layer.size for e in mine if e.status == Status.DOWNLOADING)
    # A second pull finds everything present and says so without downloading.
    events.clear()
    await svc.pull(open_registry.ref("library/busybox-multi"), progress=events.append)
    assert {e.status for e in events if e.kind == "layer"} == {Status.WAITING, Status.EXISTS}


async def _counted_pulls(
    proxy: CountingProxy, svc: ImageService, refs: list[str]
) -> list[object]:
    return list(await asyncio.gather(*(svc.pull(f"{proxy.addr}/{r}") for r in refs)))


async def test_concurrent_pulls_of_one_image_share_every_fetch(
    open_registry: SeededRegistry, counting_proxy: CountingProxy, make_service: MakeService
) -> None:
    svc = make_service(counting_proxy.addr)
    built = seeded_manifest(open_registry, "library/busybox-multi:latest")
    images = await _counted_pulls(counting_proxy, svc, ["library/busybox-multi:latest"] * 5)
    assert all(i == images[0] for i in images)
    assert counting_proxy.count("GET", "/manifests/latest") == 1
    for blob in built.blobs():
        assert counting_proxy.count("GET", f"/blobs/{blob.digest}") == 1, blob.media_type


async def test_concurrent_pulls_of_different_images_share_blobs(
    open_registry: SeededRegistry, counting_proxy: CountingProxy, make_service: MakeService
) -> None:
    # The Docker and OCI variants have different manifests but byte-identical
    # config and layer blobs; the index variant resolves to the OCI manifest.
    svc = make_service(counting_proxy.addr)
    oci = seeded_manifest(open_registry, "library/busybox-multi:latest")
    docker = seeded_manifest(open_registry, "library/busybox-multi:docker")
    assert [b.digest for b in oci.blobs()] == [b.digest for b in docker.blobs()]
    a, b, c = await _counted_pulls(
        counting_proxy, svc, ["library/busybox-multi:latest", "library/busybox-multi:docker", "library/busybox-multi:index"]
    )
    assert a.manifest_digest == c.manifest_digest != b.manifest_digest  # type: ignore[attr-defined]
    for blob in oci.blobs():
        assert counting_proxy.count("GET", f"/blobs/{blob.digest}") == 1
    # Each layer was unpacked once, into one snapshot per chain ID.
    assert len(svc.store.list_snapshots()) == 2


async def test_hostile_layer_from_a_real_registry_leaves_nothing(
    open_registry: SeededRegistry, make_service: MakeService, tmp_path: Path
) -> None:
    good = make_layer(TarBuilder().file("ok", "fine"))
    evil = make_layer(TarBuilder().symlink("etc", str(tmp_path)).raw("etc/pwned", data=b"x"))
    img = build_image([good, evil], {"Cmd": ["/bin/true"]})
    open_registry.registry.pusher().push_image("hostile/symlink", "latest", img)
    svc = make_service(open_registry.addr)
    before = store_contents(svc.store.root)
    with pytest.raises(HostileLayer) as e:
        await svc.pull(open_registry.ref("hostile/symlink"))
    assert e.value.member == "etc/pwned" and evil.blob.digest in str(e.value)
    assert not (tmp_path / "pwned").exists()
    assert store_contents(svc.store.root) == before
    assert svc.store.refs() == {}


@pytest.mark.parametrize("fmt, media_type", [("oci", OCI_MANIFEST), ("v2s2", DOCKER_MANIFEST)])
async def test_pull_what_skopeo_pushed(
    open_registry: SeededRegistry, make_service: MakeService, tmp_path: Path, fmt: str, media_type: str
) -> None:
    """Cross-check with a third-party client: skopeo copies our OCI layout (converting to schema2 for v2s2)."""
    layout = write_oci_layout(tmp_path / "layout", [("latest", busybox_multi())])
    dest = f"docker://{open_registry.addr}/skopeo/{fmt}:latest"
    proc = await asyncio.create_subprocess_exec(
        "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--format", fmt, f"oci:{layout}:latest", dest,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    svc = make_service(open_registry.addr)
    img = await svc.pull(open_registry.ref(f"skopeo/{fmt}"))
    assert img.manifest_media_type == media_type
    assert svc.image_config(open_registry.ref(f"skopeo/{fmt}")) == BUSYBOX_MULTI_CONFIG
    assert [l.diff_id for l in img.layers] == [l.diff_id for l in busybox_multi().layers]
