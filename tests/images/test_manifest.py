"""Manifest/index/config parsing, platform choice and chain IDs (pure)."""

from __future__ import annotations

import json

import pytest

from agent.images.errors import MalformedConfig, MalformedManifest, NoMatchingPlatform, UnsupportedMediaType
from agent.images.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageIndex,
    ImageManifest,
    Platform,
    chain_ids,
    host_platform,
    parse_image_config,
    parse_manifest,
    select_platform,
    sha256_digest,
)
from tests.fixtures.oci_build import busybox_multi, build_index, small_image

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _manifest(**over: object) -> bytes:
    m: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 5}],
    }
    m.update(over)
    return json.dumps(m).encode()


def test_parses_builder_output_all_four_types() -> None:
    oci, docker = busybox_multi(), busybox_multi(docker=True)
    for img, mt in ((oci, OCI_MANIFEST), (docker, DOCKER_MANIFEST)):
        m = parse_manifest(img.manifest.data, img.manifest.media_type, "t")
        assert isinstance(m, ImageManifest) and m.media_type == mt
        assert [l.digest for l in m.layers] == [l.blob.digest for l in img.layers]
    for docker_list, mt in ((False, OCI_INDEX), (True, DOCKER_MANIFEST_LIST)):
        idx = build_index([small_image("x", arch="s390x", docker=docker_list), busybox_multi(docker=docker_list)], docker=docker_list)
        parsed = parse_manifest(idx.index.data, None, "t")  # no Content-Type: mediaType field decides
        assert isinstance(parsed, ImageIndex) and parsed.media_type == mt
        chosen = select_platform(parsed, host_platform(), "t")
        assert chosen.digest == idx.images[1].digest


def test_media_type_detection_rules() -> None:
    body = json.loads(_manifest())
    del body["mediaType"]
    m = parse_manifest(json.dumps(body).encode(), "application/json", "t")
    assert m.media_type == OCI_MANIFEST  # structure decides when nothing else does
    with pytest.raises(MalformedManifest, match="disagrees"):
        parse_manifest(_manifest(), DOCKER_MANIFEST, "t")
    with pytest.raises(UnsupportedMediaType, match="application/vnd.example.thing"):
        parse_manifest(_manifest(mediaType="application/vnd.example.thing"), None, "t")
    with pytest.raises(UnsupportedMediaType, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1, "name": "x"}', "application/vnd.docker.distribution.manifest.v1+prettyjws", "t")


@pytest.mark.parametrize(
    "body, exc, fragment",
    [
        (b"{not json", MalformedManifest, "not valid JSON"),
        (b"[]", MalformedManifest, "JSON object"),
        (_manifest(schemaVersion=3), MalformedManifest, "schemaVersion must be 2"),
        (_manifest(layers="x"), MalformedManifest, "field 'layers' must be list"),
        (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:zz", "size": 1}]), MalformedManifest, "layers[0].digest"),
        (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": -1}]), MalformedManifest, "negative"),
        (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": True}]), MalformedManifest, "'size' must be int"),
        (_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D1, "size": 1}), UnsupportedMediaType, "application/vnd.cncf.helm.config.v1+json"),
        (_manifest(layers=[{"mediaType": "application/x-foo", "digest": D2, "size": 1}]), UnsupportedMediaType, "'application/x-foo'"),
        (b" " * (4 * 1024 * 1024 + 1), MalformedManifest, "more than"),
    ],
)
def test_bad_manifests(body: bytes, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc) as e:
        parse_manifest(body, None, "manifest reg/x:y")
    assert fragment in str(e.value)
    assert "manifest reg/x:y" in str(e.value)


def test_platform_selection() -> None:
    def idx(*plats: dict[str, str]) -> ImageIndex:
        ms = [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + str(i) * 64, "size": 1, "platform": p} for i, p in enumerate(plats)]
        parsed = parse_manifest(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms}).encode(), None, "t")
        assert isinstance(parsed, ImageIndex)
        return parsed

    i = idx({"os": "linux", "architecture": "arm", "variant": "v6"}, {"os": "linux", "architecture": "arm", "variant": "v7"},
            {"os": "linux", "architecture": "arm64"}, {"os": "windows", "architecture": "amd64"}, {"os": "linux", "architecture": "amd64"})
    assert select_platform(i, Platform("linux", "arm", "v7"), "t").digest.endswith("1" * 64)
    assert select_platform(i, Platform("linux", "arm64", "v8"), "t").digest.endswith("2" * 64)
    assert select_platform(i, Platform("linux", "amd64"), "t").digest.endswith("4" * 64)
    with pytest.raises(NoMatchingPlatform) as e:
        select_platform(i, Platform("linux", "s390x"), "index reg/x:y")
    assert "linux/s390x" in str(e.value) and "linux/arm/v7" in str(e.value) and "index reg/x:y" in str(e.value)


def test_config_validation() -> None:
    good = {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [D1]},
            "config": {"Env": ["A=1"], "Cmd": ["sh"], "User": "app", "Healthcheck": {"Test": ["CMD", "true"], "Interval": 5}}}
    cfg = parse_image_config(json.dumps(good).encode(), "c")
    assert cfg.diff_ids == (D1,) and cfg.config["User"] == "app"
    bad_cases = [
        ({**good, "rootfs": {"type": "other", "diff_ids": []}}, "rootfs.type"),
        ({**good, "rootfs": {"type": "layers", "diff_ids": ["nope"]}}, "diff_ids[0]"),
        ({**good, "config": {"Env": "A=1"}}, "config.Env must be a list of strings"),
        ({**good, "config": {"Env": ["NOEQUALS"]}}, "config.Env[0]"),
        ({**good, "config": {"Cmd": [1]}}, "config.Cmd"),
        ({**good, "config": {"User": 0}}, "config.User must be a string"),
        ({**good, "config": {"Healthcheck": {"Interval": -1}}}, "Healthcheck.Interval"),
        ({"os": "linux"}, "missing field rootfs"),
    ]
    for obj, fragment in bad_cases:
        with pytest.raises(MalformedConfig) as e:
            parse_image_config(json.dumps(obj).encode(), "config sha256:abc")
        assert fragment in str(e.value) and "config sha256:abc" in str(e.value)


def test_chain_ids() -> None:
    assert chain_ids([D1]) == [D1]
    c = chain_ids([D1, D2, D1])
    assert c[1] == sha256_digest(f"{D1} {D2}".encode())
    assert c[2] == sha256_digest(f"{c[1]} {D1}".encode())
