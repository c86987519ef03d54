"""WWW-Authenticate parsing, docker config.json credentials, token requests (pure)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.images.auth import (
    Challenge,
    load_docker_config,
    parse_docker_config,
    parse_token_response,
    parse_www_authenticate,
    token_url,
)
from agent.images.errors import AuthError, ConfigError


def test_bearer_challenge_keeps_quoted_commas() -> None:
    [c] = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:samalba/my-app:pull,push",
    }


def test_several_challenges_escapes_and_tokens() -> None:
    cs = parse_www_authenticate(
        'Basic realm="with \\"quotes\\", and commas" , Bearer realm=https://a/t, service=svc,error="insufficient_scope"'
    )
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == 'with "quotes", and commas'
    assert cs[1].params == {"realm": "https://a/t", "service": "svc", "error": "insufficient_scope"}


def test_garbage_challenges_do_not_crash() -> None:
    for junk in ["", ",,,", '="x"', 'Bearer realm="unterminated', "Bearer ===", "\t Basic"]:
        parse_www_authenticate(junk)  # never raises
    assert parse_www_authenticate("Basic")[0] == Challenge("basic", {})


def test_docker_config_auth_forms(tmp_path: Path) -> None:
    cfg = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hub:pass").decode()},
            "127.0.0.1:5000": {"username": "alice", "password": "wonderland"},
            "http://reg.example:8443/v2/": {"auth": base64.b64encode(b"bob:pw").decode()},
            "tokenonly.example": {"identitytoken": "xyz"},
        },
        "credsStore": "desktop",
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    c = load_docker_config(p)
    hub = c.lookup("registry-1.docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hubuser", "hub:pass")
    assert c.lookup("docker.io") == hub
    alice = c.lookup("127.0.0.1:5000")
    assert alice is not None and alice.password == "wonderland"
    assert c.lookup("reg.example:8443") is not None
    assert c.lookup("tokenonly.example") is None
    assert c.lookup("127.0.0.1:5001") is None
    assert "wonderland" not in repr(alice)
    assert load_docker_config(tmp_path / "missing.json").entries == {}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"auths": []}', "'auths' must be an object"),
        ('{"auths": {"r": {"auth": "!!!"}}}', "auths['r'].auth is not base64"),
        ('{"auths": {"r": {"auth": "%s"}}}' % base64.b64encode(b"nocolon").decode(), "does not contain 'user:password'"),
        ('{"auths": {"r": {"username": "u"}}}', "must both be strings"),
    ],
)
def test_bad_docker_config_is_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_docker_config(text, Path("/etc/orch/config.json"))
    assert fragment in str(e.value)
    assert "/etc/orch/config.json" in str(e.value)


def test_token_url_and_response() -> None:
    c = Challenge("bearer", {"realm": "https://auth.example/token?x=1", "service": "reg"})
    url = token_url(c, "repository:a/b:pull")
    q = parse_qs(urlsplit(url).query)
    assert q == {"x": ["1"], "service": ["reg"], "scope": ["repository:a/b:pull"]}
    with pytest.raises(AuthError, match="not an http"):
        token_url(Challenge("bearer", {"realm": "ftp://x"}), None)
    tok = parse_token_response(b'{"access_token": "abc", "expires_in": 120}', "r")
    assert tok.value == "abc" and tok.valid()
    with pytest.raises(AuthError, match="no token"):
        parse_token_response(b"{}", "https://realm")
    with pytest.raises(AuthError, match="invalid JSON"):
        parse_token_response(b"<html>", "https://realm")
