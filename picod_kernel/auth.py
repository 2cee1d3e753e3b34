"""JWT authentication of `/api/*` requests.

Upstream PicoD accepts any RSA-signed token with an `exp`. We keep its header parsing and
error bodies but are stricter where no client depends on the laxity: RS256 only, tokens bound
to one sandbox (`sandbox` claim) and, once used, to one session (`session_id` claim).

PyJWT (with `cryptography`) is the authority on every token, but it is imported only when a
token needs it. A token in its plain form (a `{"alg": "RS256"}` header, number claims) whose
signature and claims pass `rs256` and the checks below is one PyJWT would accept too; any other
token, and every refusal, goes through PyJWT, so the 401 bodies are PyJWT's words as before.
An accepted token is remembered by its exact text until it expires (the gateway reuses its
tokens), so a request with a known token costs a dictionary lookup, not an RSA operation.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time

from .rs256 import PublicKey, parse_public_pem

LEEWAY_SECONDS = 60
# Tokens remembered at most; beyond it the expired ones go, then all of them.
MAX_REMEMBERED = 1024
_ALGORITHMS = ["RS256"]
_PLAIN_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class AuthError(Exception):
    """A refused request: `error` and `detail` go into the 401 body unchanged."""

    def __init__(self, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


def load_public_key(pem: str) -> PublicKey:
    """Load an RSA key from a PEM `PUBLIC KEY` block, or raise ValueError saying what is wrong."""
    if not pem or not pem.strip():
        raise ValueError("PICOD_AUTH_PUBLIC_KEY is empty; set it to the router's RSA public key (PEM)")
    if "-----BEGIN PUBLIC KEY-----" not in pem:
        if "-----BEGIN RSA PUBLIC KEY-----" in pem:
            raise ValueError("PICOD_AUTH_PUBLIC_KEY holds a PKCS#1 'RSA PUBLIC KEY'; a PKIX 'PUBLIC KEY' block is required")
        raise ValueError("PICOD_AUTH_PUBLIC_KEY is not a PEM 'PUBLIC KEY' block")
    numbers = parse_public_pem(pem)
    if numbers is not None:
        return PublicKey(*numbers)
    # Anything but a plain RSA block: cryptography decides, in its own words.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"PICOD_AUTH_PUBLIC_KEY cannot be parsed: {exc}") from exc
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"PICOD_AUTH_PUBLIC_KEY holds a {type(key).__name__}; an RSA key is required")
    public = key.public_numbers()
    return PublicKey(public.n, public.e, key)


class TokenVerifier:
    """Checks `Authorization: Bearer <jwt>` headers for one sandbox.

    `sandbox_id`: when set, tokens must carry a matching `sandbox` claim.
    `issuer`: when set, tokens must carry this `iss`.
    The first accepted token that names a `session_id` locks the daemon to that session.
    The claims returned are shared with later requests bearing the same token: read only.
    """

    def __init__(self, public_key: PublicKey, sandbox_id: str | None = None, issuer: str | None = None):
        if not isinstance(public_key, PublicKey):  # a cryptography key object
            numbers = public_key.public_numbers()
            public_key = PublicKey(numbers.n, numbers.e, public_key)
        self._key = public_key
        self._sandbox_id = sandbox_id or None
        self._issuer = issuer or None
        self.session_id: str | None = None
        # token -> (claims, accepted from, accepted until): times as PyJWT would judge them
        self._accepted: dict[str, tuple[dict, float, float]] = {}

    def verify(self, header: str | None) -> dict:
        if header is None:
            raise AuthError("Missing Authorization header", "Request requires JWT authentication")
        parts = header.split(" ")
        if len(parts) != 2 or parts[0] != "Bearer" or not parts[1]:
            raise AuthError("Invalid Authorization header format", "Use Bearer <token>")
        token = parts[1]
        now = time.time()
        known = self._accepted.get(token)
        if known is not None and known[1] <= now < known[2]:
            claims = known[0]
        elif self._key.key_size < 2048:  # PyJWT warns of such keys on every token: let it
            claims = self._decode(token)
        else:
            claims = self._plain_claims(token, now) or self._decode(token)
            self._remember(token, claims)
        self._check_binding(claims)
        return claims

    def _decode(self, token: str) -> dict:
        """PyJWT's verdict: the claims, or AuthError with its reason."""
        import jwt
        options = {"require": ["exp"], "verify_aud": False}
        kwargs = {"issuer": self._issuer} if self._issuer else {}
        try:
            claims = jwt.decode(token, self._key.library_key(), algorithms=_ALGORITHMS, options=options,
                                leeway=LEEWAY_SECONDS, **kwargs)
            iat = claims.get("iat")
            if iat is not None:
                if not isinstance(iat, (int, float)):
                    raise jwt.InvalidIssuedAtError("Issued At claim (iat) must be a number")
                if iat > time.time() + LEEWAY_SECONDS:
                    raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
        except jwt.PyJWTError as exc:
            raise AuthError("Invalid token", f"JWT verification failed: {exc}") from exc
        return claims

    def _plain_claims(self, token: str, now: float) -> dict | None:
        """The claims of a token in its plain form that passes every check `_decode` makes
        (PyJWT's with our options, then ours); None when PyJWT must judge it."""
        segments = token.split(".")
        if len(segments) != 3 or not token.isascii():
            return None
        header, payload, signature = (_segment(s) for s in segments)
        if header is None or payload is None or signature is None:
            return None
        try:
            header, claims = json.loads(header), json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if (not isinstance(header, dict) or header.get("alg") != "RS256" or not header.keys() <= _PLAIN_HEADER_KEYS
                or not isinstance(header.get("typ", ""), str) or not isinstance(header.get("kid", ""), str)
                or not isinstance(claims, dict)):
            return None
        if not self._key.verify_sha256(f"{segments[0]}.{segments[1]}".encode(), signature):
            return None
        window = _window(claims)
        if window is None or not window[0] <= now < window[1]:
            return None
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return None
        if not all(isinstance(claims.get(name, ""), str) for name in ("iss", "sub", "jti")):
            return None
        return claims

    def _remember(self, token: str, claims: dict) -> None:
        window = _window(claims)
        if window is None:
            return
        if len(self._accepted) >= MAX_REMEMBERED:
            now = time.time()
            self._accepted = {t: v for t, v in self._accepted.items() if v[2] > now}
            if len(self._accepted) >= MAX_REMEMBERED:
                self._accepted.clear()
        self._accepted[token] = (claims, *window)

    def _check_binding(self, claims: dict) -> None:
        if self._sandbox_id is not None and claims.get("sandbox") != self._sandbox_id:
            raise AuthError("Invalid token", "JWT verification failed: token was not issued for this sandbox")
        session = claims.get("session_id")
        if self.session_id is None:
            if session:
                self.session_id = str(session)
        elif session != self.session_id:
            raise AuthError("Invalid token", "JWT verification failed: this sandbox belongs to another session")


def _segment(text: str) -> bytes | None:
    """A base64url segment in its canonical form (no padding, no stray bits), decoded."""
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if base64.urlsafe_b64encode(data).rstrip(b"=") == text.encode() else None


def _number(value) -> float | None:
    """A JSON number (not a boolean, not NaN or infinite)."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return value
    return None


def _window(claims: dict) -> tuple[float, float] | None:
    """[from, until): when `exp`, `iat` and `nbf` let PyJWT and `_decode` accept the claims, with
    the leeway; None when one of them is not a plain number (then PyJWT judges every time)."""
    exp = _number(claims.get("exp"))
    if exp is None:
        return None
    earliest = -math.inf
    for name in ("iat", "nbf"):
        if name in claims:
            value = _number(claims[name])
            if value is None:
                return None
            # PyJWT compares int(value) for both; `_decode` compares iat itself as well.
            earliest = max(earliest, int(value) - LEEWAY_SECONDS, value - LEEWAY_SECONDS if name == "iat" else -math.inf)
    return earliest, int(exp) + LEEWAY_SECONDS
