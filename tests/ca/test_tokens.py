"""Join tokens: format, CA pinning, rotation, redaction, precise parse errors."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
from cryptography.hazmat.primitives import serialization

from pki import (
    CAError,
    JoinToken,
    RootCA,
    TokenError,
    ca_digest,
    ca_matches,
    make_token,
    new_secret,
    parse_token,
    redact,
    secret_matches,
)

SECRET = "0123456789abcdef0123456789abcdef"
DIGEST = "d" * 64


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create("tokencluster")


def test_round_trip(ca: RootCA) -> None:
    tok = make_token(ca.cert_pem, SECRET)
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    assert tok == f"ORCHTKN-1-{hashlib.sha256(der).hexdigest()}-{SECRET}"
    t = parse_token(tok + "\n")  # a pasted newline is fine
    assert (t.digest, t.secret) == (ca.digest, SECRET)
    assert t.reveal() == tok
    # The digest is the same whichever form the certificate comes in.
    assert {ca_digest(ca.cert), ca_digest(ca.cert_pem), ca_digest(ca.cert_pem.encode()), ca_digest(der)} == {ca.digest}


def test_fresh_secrets_are_random_128_bit_hex(ca: RootCA) -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50 and all(re.fullmatch(r"[0-9a-f]{32}", s) for s in secrets)
    a, b = make_token(ca.cert_pem), make_token(ca.cert_pem)
    assert a != b and parse_token(a).digest == parse_token(b).digest


def test_ca_pinning(ca: RootCA) -> None:
    tok = make_token(ca.cert_pem, SECRET)
    other = RootCA.create("tokencluster")  # same name, different key: must not match
    assert ca_matches(tok, ca.cert_pem) and ca_matches(parse_token(tok), ca.cert)
    assert not ca_matches(tok, other.cert_pem)
    assert not ca_matches(tok, "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert not parse_token(tok).matches_ca(b"")
    with pytest.raises(TokenError):
        ca_matches("ORCHTKN-1-short-" + SECRET, ca.cert_pem)


def test_rotation_invalidates_the_old_token(ca: RootCA) -> None:
    old_secret = new_secret()
    old = make_token(ca.cert_pem, old_secret)
    assert secret_matches(old, old_secret)
    rotated = new_secret()
    assert not secret_matches(old, rotated)
    assert secret_matches(make_token(ca.cert_pem, rotated), rotated)
    t = parse_token(old)
    assert t.secret_is(old_secret) and not t.secret_is(rotated) and not t.secret_is(None)  # type: ignore[arg-type]


def test_tokens_are_never_shown_whole(ca: RootCA, caplog: pytest.LogCaptureFixture) -> None:
    tok = make_token(ca.cert_pem, SECRET)
    t = parse_token(tok)
    with caplog.at_level(logging.INFO):
        logging.getLogger("orch.test").info("joining with %s / %r / %s", t, t, redact(tok))
    for text in (repr(t), str(t), f"{t}", redact(tok), caplog.text):
        assert SECRET not in text and ca.digest not in text
        assert "redacted" in text
    assert redact("not a token " + SECRET) == "<unparseable join token, redacted>"
    # No accidental == on secrets (variable time); identity only.
    assert parse_token(tok) != parse_token(tok)


@pytest.mark.parametrize(("token", "message"), [
    ("", "the join token is empty"),
    ("   \n", "the join token is empty"),
    ("x" * 600, "600 characters long; a valid one has 107"),
    ("ORCHTKN-1-" + DIGEST, "4 fields separated by '-', got 3"),
    ("ORCHTKN-1-" + DIGEST + "-" + SECRET + "-x", "got 5"),
    ("SWMTKN-1-" + DIGEST + "-" + SECRET, "starts with ORCHTKN-, this one with 'SWMTKN' (that is a Docker Swarm"),
    ("orchtkn-1-" + DIGEST + "-" + SECRET, "this one with 'orchtkn'"),
    ("ORCHTKN-2-" + DIGEST + "-" + SECRET, "unsupported token version '2': this node reads version 1"),
    ("ORCHTKN--" + DIGEST + "-" + SECRET, "unsupported token version (empty)"),
    ("ORCHTKN-1-" + DIGEST[:63] + "-" + SECRET, "CA digest must be 64 hex digits, got 63 characters"),
    ("ORCHTKN-1-" + "A" + DIGEST[1:] + "-" + SECRET, "lowercase hex digits (0-9a-f): character 1 is 'A'"),
    ("ORCHTKN-1-" + DIGEST[:63] + "\n-" + SECRET, "character 64 is '\\n'"),
    ("ORCHTKN-1-" + DIGEST + "-" + SECRET[:31], "secret must be 32 lowercase hex digits, got 31 characters"),
    ("ORCHTKN-1-" + DIGEST + "-" + SECRET[:31] + "G",
     "secret must be lowercase hex digits (0-9a-f): character 32 is not"),
])
def test_parse_errors_say_what_is_wrong(token: str, message: str) -> None:
    with pytest.raises(TokenError, match=re.escape(message)) as e:
        parse_token(token)
    assert isinstance(e.value, CAError)  # one family of errors for callers
    assert SECRET not in str(e.value) and SECRET[:31] not in str(e.value)


def test_a_mangled_paste_does_not_echo_the_secret() -> None:
    # The secret landed where the prefix should be: the message must not quote it.
    with pytest.raises(TokenError) as e:
        parse_token(SECRET + "-1-" + DIGEST + "-" + SECRET)
    assert SECRET not in str(e.value) and "(32 characters)" in str(e.value)
    with pytest.raises(TokenError, match="a join token is a string, got bytes"):
        parse_token(b"ORCHTKN")  # type: ignore[arg-type]


def test_make_token_checks_its_inputs(ca: RootCA) -> None:
    with pytest.raises(TokenError, match="secret"):
        make_token(ca.cert_pem, "short")
    with pytest.raises(CAError, match="CA certificate"):
        make_token("not a certificate", SECRET)
    assert isinstance(parse_token(make_token(ca.cert_pem, SECRET)), JoinToken)
