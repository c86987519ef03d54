"""nftables scripts run through libnftables (the library the `nft` binary
is built on), in the calling thread's network namespace.

The node writes a small table into every networked task's namespace each
time a service's backends change; forking `nsenter nft -f -` per namespace
costs milliseconds of fork+exec each, the library call a fraction of one.
Used from the dataplane's worker thread after `netlink.entered(path)`; a
fresh context per call, so its netlink socket is opened in the namespace
the thread is in at that moment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import threading

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_missing = False


class NftError(RuntimeError):
    """An nftables script was refused; the message is nft's."""


def _load() -> ctypes.CDLL | None:
    global _lib, _missing
    with _lib_lock:
        if _lib is not None or _missing:
            return _lib
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            _missing = True
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
        return lib


def run(script: str) -> str:
    """Apply an nft script as one transaction in the calling thread's
    network namespace (or run a command such as `list table ...`); nft's
    output, NftError with nft's message when it is refused. Falls back to
    the `nft` binary where the library is not installed."""
    lib = _load()
    if lib is None:
        cp = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
        if cp.returncode != 0:
            raise NftError(cp.stderr.strip() or f"nft exited with {cp.returncode}")
        return cp.stdout
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        if rc != 0:
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
            raise NftError(err.decode(errors="replace").strip() or f"nft failed ({rc})")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)
