"""Encryption of secret payloads at rest in the store.

Secrets are written to the Raft log and snapshots encrypted with the
cluster's secrets key (AES-256-GCM, a fresh 96-bit nonce per secret, the
secret's id as associated data so a ciphertext cannot be moved to another
secret). The key is not in the store: every manager keeps it in
`<data dir>/cluster/secrets.key` (0600), made at `orch init` and handed to
new managers over mutual TLS when they join or are promoted. Payloads are
decrypted only to be sent to the nodes that run tasks using them.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.fsutil import write_atomic

MAGIC = b"orchsec1"


class SecretBoxError(Exception):
    pass


def new_key() -> bytes:
    return secrets.token_bytes(32)


def load_key(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            key = f.read()
    except FileNotFoundError:
        return None
    if len(key) != 32:
        raise SecretBoxError(f"{path}: a secrets key is 32 bytes (found {len(key)}); the file is damaged")
    return key


def save_key(path: str, key: bytes) -> None:
    write_atomic(path, key, 0o600)


def seal(key: bytes, secret_id: str, data: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, secret_id.encode())


def open_(key: bytes, secret_id: str, blob: bytes) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
        raise SecretBoxError(f"secret {secret_id}: not an encrypted payload")
    nonce = blob[len(MAGIC):len(MAGIC) + 12]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + 12:], secret_id.encode())
    except InvalidTag:
        raise SecretBoxError(f"secret {secret_id}: cannot decrypt (wrong cluster key or tampered data)") from None
