"""JWT authentication of `/api/*` requests.

Upstream PicoD accepts any RSA-signed token with an `exp`. We keep its header parsing and
error bodies but are stricter where no client depends on the laxity: RS256 only, tokens bound
to one sandbox (`sandbox` claim) and, once used, to one session (`session_id` claim).
"""

from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

LEEWAY_SECONDS = 60


class AuthError(Exception):
    """A refused request: `error` and `detail` go into the 401 body unchanged."""

    def __init__(self, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


def load_public_key(pem: str) -> RSAPublicKey:
    """Load an RSA key from a PEM `PUBLIC KEY` block, or raise ValueError saying what is wrong."""
    if not pem or not pem.strip():
        raise ValueError("PICOD_AUTH_PUBLIC_KEY is empty; set it to the router's RSA public key (PEM)")
    if "-----BEGIN PUBLIC KEY-----" not in pem:
        if "-----BEGIN RSA PUBLIC KEY-----" in pem:
            raise ValueError("PICOD_AUTH_PUBLIC_KEY holds a PKCS#1 'RSA PUBLIC KEY'; a PKIX 'PUBLIC KEY' block is required")
        raise ValueError("PICOD_AUTH_PUBLIC_KEY is not a PEM 'PUBLIC KEY' block")
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"PICOD_AUTH_PUBLIC_KEY cannot be parsed: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"PICOD_AUTH_PUBLIC_KEY holds a {type(key).__name__}; an RSA key is required")
    return key


class TokenVerifier:
    """Checks `Authorization: Bearer <jwt>` headers for one sandbox.

    `sandbox_id`: when set, tokens must carry a matching `sandbox` claim.
    `issuer`: when set, tokens must carry this `iss`.
    The first accepted token that names a `session_id` locks the daemon to that session.
    """

    def __init__(self, public_key: RSAPublicKey, sandbox_id: str | None = None, issuer: str | None = None):
        self._key = public_key
        self._sandbox_id = sandbox_id or None
        self._issuer = issuer or None
        self.session_id: str | None = None

    def verify(self, header: str | None) -> dict:
        if header is None:
            raise AuthError("Missing Authorization header", "Request requires JWT authentication")
        parts = header.split(" ")
        if len(parts) != 2 or parts[0] != "Bearer" or not parts[1]:
            raise AuthError("Invalid Authorization header format", "Use Bearer <token>")
        try:
            claims = self._decode(parts[1])
        except jwt.PyJWTError as exc:
            raise AuthError("Invalid token", f"JWT verification failed: {exc}") from exc
        self._check_binding(claims)
        return claims

    def _decode(self, token: str) -> dict:
        options = {"require": ["exp"], "verify_aud": False}
        kwargs = {"issuer": self._issuer} if self._issuer else {}
        claims = jwt.decode(token, self._key, algorithms=["RS256"], options=options,
                            leeway=LEEWAY_SECONDS, **kwargs)
        iat = claims.get("iat")
        if iat is not None:
            if not isinstance(iat, (int, float)):
                raise jwt.InvalidIssuedAtError("Issued At claim (iat) must be a number")
            if iat > time.time() + LEEWAY_SECONDS:
                raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
        return claims

    def _check_binding(self, claims: dict) -> None:
        if self._sandbox_id is not None and claims.get("sandbox") != self._sandbox_id:
            raise AuthError("Invalid token", "JWT verification failed: token was not issued for this sandbox")
        session = claims.get("session_id")
        if self.session_id is None:
            if session:
                self.session_id = str(session)
        elif session != self.session_id:
            raise AuthError("Invalid token", "JWT verification failed: this sandbox belongs to another session")
