"""Limits that PicoD and the gateway must agree on.

This is the one module of PicoD's package the gateway imports (a shared wire constant, no
behaviour), so that "too large" means the same size at every hop: an upload the gateway accepts
is never refused by the sandbox behind it.
"""

MAX_BODY_BYTES = 32 * 1024 * 1024  # the largest request body, in bytes; 413 above it
