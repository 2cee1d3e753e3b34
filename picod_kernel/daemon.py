"""The daemon's entry point (`picod`, `python -m picod_kernel`): OpenSSL kept out, then `app.main`.

PicoD speaks plain HTTP (TLS, where there is any, ends before the sandbox) and hashes only small
things (tokens, the kernel messages it signs), which Python's built-in SHA-256 does as well.
Left alone, asyncio imports `ssl` and hashlib imports `_hashlib`, and each loads and initialises
OpenSSL: about 2.7 MiB of an idle daemon's 20. `_hashlib` stays out for the daemon's life
(hashlib then uses its built-in digests); `ssl` is kept out only while asyncio is imported, so
whatever needs it later (PyJWT, for an unusual or refused token) still gets it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.modules.setdefault("_hashlib", None)
    blocked = "ssl" not in sys.modules
    if blocked:
        sys.modules["ssl"] = None  # asyncio then goes without TLS, which PicoD never uses
    try:
        import asyncio  # noqa: F401
    finally:
        if blocked:
            del sys.modules["ssl"]
    from .app import main as run

    return run(argv)
