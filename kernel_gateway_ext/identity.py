"""The gateway's signing identity: one RSA-2048 key pair, RS256 tokens for PicoD.

Persisted so that sandboxes started by one gateway keep accepting tokens from the next. The
file layout matches upstream's Secret data (`private.pem` PKCS#1, `public.pem` PKIX).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("kernelcube.identity")

TOKEN_TTL = 300
# Tokens are reused while younger than this, sparing an RSA signature (~1 ms) per request.
TOKEN_REUSE = 60
ISSUER = "kernelcube-gateway"


class Identity:
    def __init__(self, private_key: rsa.RSAPrivateKey):
        self._key = private_key
        self.public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}

    @classmethod
    def generate(cls) -> Identity:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def from_pem(cls, private_pem: bytes) -> Identity:
        """From an RSA private key in PEM (PKCS#1 or PKCS#8); ValueError otherwise."""
        key = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return cls(key)

    @property
    def private_pem(self) -> str:
        """The private key as PKCS#1 PEM (`RSA PRIVATE KEY`), the layout of upstream's Secret."""
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()).decode()

    @classmethod
    def load_or_create(cls, directory: str) -> Identity:
        """Load `<directory>/private.pem`, or create the pair there (0600, written atomically)."""
        path = os.path.join(directory, "private.pem")
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            try:
                return cls.from_pem(data)
            except ValueError:
                raise ValueError(f"{path} does not hold an RSA private key") from None
        identity = cls.generate()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _write_atomically(path, identity.private_pem.encode(), 0o600)
        _write_atomically(os.path.join(directory, "public.pem"), identity.public_pem.encode(), 0o644)
        log.info("created the gateway signing key in %s", directory)
        return identity

    def token(self, session_id: str, sandbox: str) -> str:
        """An RS256 token for one session on one sandbox (claims iss, iat, exp, session_id, sandbox)."""
        now = time.time()
        cached = self._tokens.get((session_id, sandbox))
        if cached and now - cached[0] < TOKEN_REUSE:
            return cached[1]
        issued = int(now)
        token = jwt.encode({"iss": ISSUER, "iat": issued, "exp": issued + TOKEN_TTL,
                            "session_id": session_id, "sandbox": sandbox}, self._key, algorithm="RS256")
        if len(self._tokens) > 10000:
            self._tokens.clear()
        self._tokens[(session_id, sandbox)] = (now, token)
        return token

    def forget(self, session_id: str, sandbox: str) -> None:
        self._tokens.pop((session_id, sandbox), None)


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
