"""RS256 without a crypto library: an RSA public key from a PEM `PUBLIC KEY` block, and
RSASSA-PKCS1-v1_5 signature verification with SHA-256 (RFC 8017, section 8.2.2).

Why: the `cryptography` package is the largest part of an idle PicoD (its Rust extension
alone is about 6 MiB of resident memory, and importing it with PyJWT takes about 35 ms of a
start), yet all the daemon needs of it is one modular exponentiation per new token.

Only what is plainly well formed is handled here; `parse_public_pem` answers None for
anything else (another key type, a BER encoding, text around the block), and the caller then
asks `cryptography`, whose verdict and error messages stand. Verification follows the RFC's
encode-and-compare method: the expected encoded message is built from the digest and compared
whole, never parsed out of the signature, so no malformed padding can be accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
PEM_END = "-----END PUBLIC KEY-----"
# AlgorithmIdentifier { rsaEncryption, NULL }, DER.
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
# DigestInfo prefix for SHA-256 (RFC 8017, section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
MAX_MODULUS_BITS = 16384


class PublicKey:
    """An RSA public key (n, e). `key_size` in bits, as `cryptography` names it."""

    def __init__(self, n: int, e: int, library_key: object | None = None):
        self.n, self.e = n, e
        self.key_size = n.bit_length()
        self._size_bytes = (self.key_size + 7) // 8
        self._library_key = library_key

    def verify_sha256(self, message: bytes, signature: bytes) -> bool:
        """True when `signature` is a PKCS#1 v1.5 signature of SHA-256(message) by this key."""
        k = self._size_bytes
        if len(signature) != k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        encoded = pow(s, self.e, self.n).to_bytes(k, "big")
        digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        expected = b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info
        return hmac.compare_digest(encoded, expected)

    def library_key(self):
        """The same key as a `cryptography` object, for PyJWT (imported only when asked)."""
        if self._library_key is None:
            from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers
            self._library_key = RSAPublicNumbers(self.e, self.n).public_key()
        return self._library_key


def parse_public_pem(pem: str) -> tuple[int, int] | None:
    """(n, e) of an RSA key in one canonical PEM `PUBLIC KEY` block (DER SubjectPublicKeyInfo)
    and nothing else; None for any other input, which is for `cryptography` to judge."""
    text = pem.strip()
    if not (text.startswith(PEM_BEGIN) and text.endswith(PEM_END)) or text.count("-----") != 4:
        return None
    body = "".join(text[len(PEM_BEGIN):-len(PEM_END)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        spki, rest = _tlv(der, 0x30)
        if rest:
            return None
        if not spki.startswith(_RSA_ALGORITHM):
            return None
        bits, rest = _tlv(spki[len(_RSA_ALGORITHM):], 0x03)
        if rest or bits[:1] != b"\x00":
            return None
        numbers, rest = _tlv(bits[1:], 0x30)
        if rest:
            return None
        n, rest = _integer(numbers)
        e, rest = _integer(rest)
        if rest:
            return None
    except ValueError:
        return None
    if n % 2 == 0 or e % 2 == 0 or not 3 <= e < n or n.bit_length() > MAX_MODULUS_BITS:
        return None
    return n, e


def _tlv(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """The content of one DER element with `tag` at the start of `data`, and what follows it."""
    if len(data) < 2 or data[0] != tag:
        raise ValueError("unexpected tag")
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise ValueError("bad length")
        length = int.from_bytes(data[2:2 + count], "big")
        offset += count
        if length < 0x80 or length >> (8 * (count - 1)) == 0:
            raise ValueError("length not in its shortest form")
    end = offset + length
    if end > len(data):
        raise ValueError("truncated")
    return data[offset:end], data[end:]


def _integer(data: bytes) -> tuple[int, bytes]:
    """A positive DER INTEGER in its shortest form."""
    content, rest = _tlv(data, 0x02)
    if not content or content[0] & 0x80:
        raise ValueError("not a positive integer")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise ValueError("integer not in its shortest form")
    return int.from_bytes(content, "big"), rest
