"""JWT checks: RS256 only, exp required, iat not in the future, leeway, sandbox and session
binding, header parsing and the 401 bodies; plus public-key loading errors."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from picod_kernel.auth import AuthError, TokenVerifier, load_public_key
from tests.support.keys import KeyPair


@pytest.fixture(scope="module")
def other_keys() -> KeyPair:
    return KeyPair()


def verifier(keys, **kwargs) -> TokenVerifier:
    return TokenVerifier(load_public_key(keys.public_pem), **kwargs)


def refused(v: TokenVerifier, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(header)
    return info.value


def test_valid_token_accepted(keys):
    claims = verifier(keys).verify(f"Bearer {keys.token(session_id=None)}")
    assert claims["iss"] == "test"


def test_audience_is_ignored(keys):
    assert verifier(keys).verify(f"Bearer {keys.token(aud='someone-else')}")


@pytest.mark.parametrize("header", [None, "bearer x", "Bearer  x", "Bearer a b", "Token x", "Bearer"])
def test_header_format(keys, header):
    error = refused(verifier(keys), header)
    if header is None:
        assert (error.error, error.detail) == ("Missing Authorization header", "Request requires JWT authentication")
    else:
        assert (error.error, error.detail) == ("Invalid Authorization header format", "Use Bearer <token>")


def _unsigned(claims: dict, alg: str = "none") -> str:
    def b64(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."


def test_alg_none_refused(keys):
    token = _unsigned({"exp": time.time() + 300})
    assert refused(verifier(keys), f"Bearer {token}").error == "Invalid token"


def test_hs256_signed_with_public_key_refused(keys):
    # The classic key-confusion attack: the public key (public knowledge) used as an HMAC secret.
    import hashlib
    import hmac
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) + 300}).encode()).rstrip(b"=")
    signature = hmac.new(keys.public_pem.encode(), header + b"." + body, hashlib.sha256).digest()
    token = b".".join([header, body, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()
    error = refused(verifier(keys), f"Bearer {token}")
    assert error.error == "Invalid token" and error.detail.startswith("JWT verification failed: ")


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
def test_other_rsa_algorithms_refused(keys, alg):
    assert refused(verifier(keys), f"Bearer {keys.token(algorithm=alg)}").error == "Invalid token"


def test_expired_refused_beyond_leeway(keys):
    v = verifier(keys)
    assert v.verify(f"Bearer {keys.token(exp=int(time.time()) - 30)}")  # within the 60 s leeway
    assert "expired" in refused(v, f"Bearer {keys.token(exp=int(time.time()) - 90)}").detail


def test_exp_required(keys):
    assert "exp" in refused(verifier(keys), f"Bearer {keys.token(exp=None)}").detail


def test_future_iat_refused(keys):
    v = verifier(keys)
    assert v.verify(f"Bearer {keys.token(iat=int(time.time()) + 30)}")
    assert "iat" in refused(v, f"Bearer {keys.token(iat=int(time.time()) + 120)}").detail


def test_wrong_key_refused(keys, other_keys):
    assert "Signature" in refused(verifier(keys), f"Bearer {other_keys.token()}").detail


def test_tampered_claims_refused(keys):
    head, body, sig = keys.token(sandbox="a").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sandbox"] = "b"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refused(verifier(keys, sandbox_id="b"), f"Bearer {head}.{forged}.{sig}").error == "Invalid token"


def test_sandbox_binding(keys):
    v = verifier(keys, sandbox_id="sb-1")
    assert v.verify(f"Bearer {keys.token(sandbox='sb-1')}")
    assert "this sandbox" in refused(v, f"Bearer {keys.token(sandbox='sb-2')}").detail
    assert "this sandbox" in refused(v, f"Bearer {keys.token(sandbox=None)}").detail


def test_first_session_locks_the_sandbox(keys):
    v = verifier(keys)
    v.verify(f"Bearer {keys.token(session_id=None)}")  # no session named: no lock yet
    assert v.session_id is None
    v.verify(f"Bearer {keys.token(session_id='s-1')}")
    assert v.session_id == "s-1"
    v.verify(f"Bearer {keys.token(session_id='s-1')}")
    assert "another session" in refused(v, f"Bearer {keys.token(session_id='s-2')}").detail
    assert "another session" in refused(v, f"Bearer {keys.token(session_id=None)}").detail


def test_issuer_checked_only_when_configured(keys):
    assert verifier(keys).verify(f"Bearer {keys.token(iss='agentcube-router')}")
    v = verifier(keys, issuer="kernelcube")
    assert v.verify(f"Bearer {keys.token(iss='kernelcube')}")
    assert refused(v, f"Bearer {keys.token(iss='agentcube-router')}").error == "Invalid token"


def test_public_key_loading(keys):
    assert load_public_key(keys.public_pem).key_size == 2048
    pkcs1 = keys.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for pem, wording in [("", "empty"), ("hello", "not a PEM"), (pkcs1, "PKCS#1"),
                         (ec_pem, "RSA key is required"),
                         ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot be parsed")]:
        with pytest.raises(ValueError, match=wording):
            load_public_key(pem)


def test_pyjwt_rejects_none_even_if_listed(keys):
    # Guard against a future PyJWT default change: we pass algorithms=["RS256"] explicitly.
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(_unsigned({"exp": time.time() + 60}), load_public_key(keys.public_pem), algorithms=["RS256"])
