"""The verifier's own RS256 path and its memory of accepted tokens change nothing PyJWT decides:
for every token below (plain, odd, hostile) the answer, and the 401 detail word for word, is
the one PyJWT gives with PicoD's options; only plain tokens skip PyJWT; an accepted token is
remembered until it expires, not beyond; the key parser agrees with `cryptography`; and an idle
daemon's verification path imports neither PyJWT nor `cryptography`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import jwt.warnings
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from picod_kernel import auth
from picod_kernel.auth import AuthError, TokenVerifier, load_public_key
from picod_kernel.rs256 import parse_public_pem
from tests.support.keys import KeyPair

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
REPO = Path(__file__).resolve().parents[2]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(keys: KeyPair, header: dict, claims: dict | str, pad: bool = False) -> str:
    """A token signed by hand, so that any header, claim value or segment form can be made."""
    head = b64(json.dumps(header).encode())
    body = b64((claims if isinstance(claims, str) else json.dumps(claims)).encode())
    if pad:
        head, body = (s + "=" * (-len(s) % 4) for s in (head, body))
    signature = keys.private_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def reference(pem: str, token: str, issuer: str | None = None) -> dict | str:
    """What PicoD decided before it had a path of its own: PyJWT, then the iat check."""
    key = serialization.load_pem_public_key(pem.encode())
    try:
        claims = jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp"], "verify_aud": False},
                            leeway=auth.LEEWAY_SECONDS, **({"issuer": issuer} if issuer else {}))
        iat = claims.get("iat")
        if iat is not None:
            if not isinstance(iat, (int, float)):
                raise jwt.InvalidIssuedAtError("Issued At claim (iat) must be a number")
            if iat > time.time() + auth.LEEWAY_SECONDS:
                raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    except jwt.PyJWTError as exc:
        return f"JWT verification failed: {exc}"
    return claims


def verdict(verifier: TokenVerifier, token: str) -> dict | str:
    try:
        return verifier.verify(f"Bearer {token}")
    except AuthError as exc:
        return exc.detail


def cases(keys: KeyPair, other: KeyPair) -> dict[str, tuple[str, bool]]:
    """name -> (token, plain: whether it may skip PyJWT)."""
    now = int(time.time())
    rs = {"alg": "RS256", "typ": "JWT"}
    good = {"iss": "test", "iat": now, "exp": now + 300, "session_id": "s"}
    head, body, sig = signed(keys, rs, good).split(".")
    padded = next(c for c in ({**good, "x": "y" * n} for n in range(3)) if len(json.dumps(c)) % 3)
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    return {
        "plain": (signed(keys, rs, good), True),
        "no typ, a kid": (signed(keys, {"alg": "RS256", "kid": "k1"}, good), True),
        "float exp and iat": (signed(keys, rs, {**good, "exp": now + 300.5, "iat": now - 0.5}), True),
        "within leeway": (signed(keys, rs, {**good, "exp": now - 30}), True),
        "expired": (signed(keys, rs, {**good, "exp": now - 90}), False),
        "no exp": (signed(keys, rs, {"iat": now}), False),
        "exp null": (signed(keys, rs, {"exp": None}), False),
        "exp true": (signed(keys, rs, {"exp": True}), False),
        "exp as text": (signed(keys, rs, {"exp": str(now + 300)}), False),
        "exp NaN": (signed(keys, rs, '{"exp": NaN}'), False),
        "exp huge": (signed(keys, rs, {"exp": 10 ** 30}), True),
        "iat soon": (signed(keys, rs, {**good, "iat": now + 30}), True),
        "iat future": (signed(keys, rs, {**good, "iat": now + 120}), False),
        "iat as text": (signed(keys, rs, {**good, "iat": str(now)}), False),
        "iat null": (signed(keys, rs, {**good, "iat": None}), False),
        "nbf future": (signed(keys, rs, {**good, "nbf": now + 120}), False),
        "nbf past": (signed(keys, rs, {**good, "nbf": now - 5.5}), True),
        "sub number": (signed(keys, rs, {**good, "sub": 7}), False),
        "jti number": (signed(keys, rs, {**good, "jti": 7}), False),
        "aud ignored": (signed(keys, rs, {**good, "aud": ["x", 3]}), True),
        "kid number": (signed(keys, {"alg": "RS256", "kid": 3}, good), False),
        "crit header": (signed(keys, {**rs, "crit": ["exp"]}, good), False),
        "b64 false": (signed(keys, {**rs, "b64": False, "crit": ["b64"]}, good), False),
        "padded segments": (signed(keys, rs, padded, pad=True), False),
        "claims not an object": (signed(keys, rs, "[1]"), False),
        "header not JSON": (b64(b"{nope") + "." + body + "." + sig, False),
        "signature flipped": (f"{head}.{body}.{flipped}", False),
        "signature cut": (f"{head}.{body}.{sig[:-4]}", False),
        "other key": (signed(other, rs, good), False),
        "RS384": (keys.token(algorithm="RS384"), False),
        "alg none": (f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}.", False),
        "two segments": (f"{head}.{body}", False),
        "four segments": (f"{head}.{body}.{sig}.{sig}", False),
        "not base64": (f"{head}.{body}!.{sig}", False),
        "non-ASCII": (f"{head}.{body}\u00e9.{sig}", False),
        "stray bits": (f"{head}.{body[:-1]}{ALPHABET[ALPHABET.index(body[-1]) ^ 1]}.{sig}", False),
    }


@pytest.fixture(scope="module")
def other_keys() -> KeyPair:
    return KeyPair()


def test_same_verdicts_as_pyjwt(keys, other_keys, monkeypatch):
    through_pyjwt = []
    original = TokenVerifier._decode
    monkeypatch.setattr(TokenVerifier, "_decode", lambda self, token: through_pyjwt.append(token) or original(self, token))
    for name, (token, plain) in cases(keys, other_keys).items():
        assert name != "padded segments" or "=" in token
        verifier = TokenVerifier(load_public_key(keys.public_pem))
        expected = reference(keys.public_pem, token)
        through_pyjwt.clear()
        assert verdict(verifier, token) == expected, name
        assert verdict(verifier, token) == expected, f"{name}, asked again"
        assert (not through_pyjwt) == plain, f"{name}: PyJWT asked {len(through_pyjwt)} times"
        if isinstance(expected, dict) and name != "exp as text":  # a claim PyJWT alone reads: asked each time
            assert len(through_pyjwt) <= 1, f"{name}: an accepted token is remembered"


def test_issuer_same_verdicts(keys):
    now = int(time.time())
    for iss in ("kernelcube", "other", 3, None):
        claims = {"exp": now + 300, **({"iss": iss} if iss is not None else {})}
        token = signed(keys, {"alg": "RS256"}, claims)
        verifier = TokenVerifier(load_public_key(keys.public_pem), issuer="kernelcube")
        assert verdict(verifier, token) == reference(keys.public_pem, token, issuer="kernelcube"), iss


def test_remembered_only_until_expiry(keys):
    verifier = TokenVerifier(load_public_key(keys.public_pem))
    token = keys.token(exp=int(time.time()) - auth.LEEWAY_SECONDS + 1, iat=None)  # accepted for at most 1 s more
    assert isinstance(verdict(verifier, token), dict)
    time.sleep(1.1)
    assert verdict(verifier, token) == "JWT verification failed: Signature has expired"


def test_memory_is_bounded(keys, monkeypatch):
    monkeypatch.setattr(auth, "MAX_REMEMBERED", 5)
    verifier = TokenVerifier(load_public_key(keys.public_pem))
    for i in range(12):
        verifier.verify(f"Bearer {keys.token(jti=str(i), session_id=None)}")
        assert len(verifier._accepted) <= 5


def test_binding_checked_on_remembered_tokens(keys):
    verifier = TokenVerifier(load_public_key(keys.public_pem), sandbox_id="sb-1")
    token = keys.token(sandbox="sb-2")
    for _ in range(2):
        assert "this sandbox" in verdict(verifier, token)


@pytest.mark.parametrize(("bits", "exponent"), [(2048, 65537), (3072, 65537), (4096, 3), (1024, 65537)])
def test_key_parser_agrees_with_cryptography(bits, exponent):
    public = rsa.generate_private_key(public_exponent=exponent, key_size=bits).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    numbers = public.public_numbers()
    assert parse_public_pem(pem) == (numbers.n, numbers.e)
    assert parse_public_pem("\n" + pem.replace("\n", "\r\n") + "\n\n") == (numbers.n, numbers.e)
    key = load_public_key(pem)
    assert (key.n, key.e, key.key_size) == (numbers.n, numbers.e, bits)


def test_key_parser_leaves_the_rest_to_cryptography(keys):
    pem = keys.public_pem
    body = "".join(pem.strip().splitlines()[1:-1])
    der = base64.b64decode(body)
    for odd in [f"comment\n{pem}", pem + pem, pem.replace(body[:8], body[:7] + "!"),
                "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der + b"\0").decode() + "\n-----END PUBLIC KEY-----\n"]:
        assert parse_public_pem(odd) is None
    key = load_public_key(f"comment\n{pem}")  # cryptography reads it: the key works the same
    assert isinstance(verdict(TokenVerifier(key), keys.token()), dict)


def test_small_keys_keep_pyjwt_warning():
    InsecureKeyLengthWarning = getattr(jwt.warnings, "InsecureKeyLengthWarning", None)
    if InsecureKeyLengthWarning is None:
        pytest.skip("this PyJWT does not warn of short keys")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.warns(InsecureKeyLengthWarning):
        token = jwt.encode({"exp": int(time.time()) + 60}, small, algorithm="RS256")
    verifier = TokenVerifier(load_public_key(pem))
    for _ in range(2):
        with pytest.warns(InsecureKeyLengthWarning):
            assert isinstance(verdict(verifier, token), dict)


def test_idle_path_imports_no_crypto_library(keys, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "from picod_kernel.auth import TokenVerifier, load_public_key\n"
        "v = TokenVerifier(load_public_key(sys.argv[1]))\n"
        "v.verify('Bearer ' + sys.argv[2])\n"
        "loaded = sorted(m for m in ('jwt', 'cryptography') if m in sys.modules)\n"
        "assert not loaded, loaded\n")
    subprocess.run([sys.executable, str(script), keys.public_pem, keys.token()], check=True, cwd=str(tmp_path),
                   env={"PYTHONPATH": str(REPO)})
