"""Reference parsing and normalisation (pure)."""

from __future__ import annotations

import pytest

from agent.images.errors import InvalidReference
from agent.images.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None),
        ("me/app", "docker.io", "me/app", "latest", None),
        ("ghcr.io/org/team/app:v1.2-rc_3", "ghcr.io", "org/team/app", "v1.2-rc_3", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("127.0.0.1:5000/ns/app:t", "127.0.0.1:5000", "ns/app", "t", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        (f"busybox@{D}", "docker.io", "library/busybox", None, D),
        (f"reg.example:443/a/b:tag@{D}", "reg.example:443", "a/b", "tag", D),
        ("a.b/c__d/e-f.g", "a.b", "c__d/e-f.g", "latest", None),
    ],
)
def test_parse_and_normalise(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    r = parse_reference(text)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repository, tag, digest)
    # The canonical form parses back to the same reference.
    assert parse_reference(str(r)) == r


def test_manifest_reference_and_api_host() -> None:
    r = parse_reference("busybox")
    assert r.reference == "latest"
    assert r.api_host == "registry-1.docker.io"
    assert r.familiar() == "busybox:latest"
    p = parse_reference(f"127.0.0.1:5000/app:t@{D}")
    assert p.reference == D  # a digest pins the manifest even with a tag
    assert p.api_host == "127.0.0.1:5000"
    assert str(p) == f"127.0.0.1:5000/app:t@{D}"
    assert Reference("docker.io", "me/app", "x").familiar() == "me/app:x"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox:", "tag ''"),
        ("busybox:-bad", "tag '-bad'"),
        ("busybox:" + "x" * 129, "tag"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
        ("busybox@nodigest", "is not a digest"),
        ("a//b", "empty path component"),
        ("a/b_-c", "path component 'b_-c'"),
        ("bad_host:5000/app", "registry 'bad_host:5000'"),
        ("reg.example/", "no repository path"),
        ("bus box", "whitespace"),
        (":tag", "no repository"),
        ("reg.example:5000/" + "a" * 300, "longer than 255"),
    ],
)
def test_invalid_references_name_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as e:
        parse_reference(text)
    assert fragment in str(e.value)
    assert isinstance(e.value, ValueError)
