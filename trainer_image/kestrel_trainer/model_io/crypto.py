"""The `.tlt` container: a small authenticated header + the AES-256-GCM ciphertext of a model file.

Layout (big-endian):

    magic      8s   b"KESTREL\\0"
    version    H    container format version (1)
    cipher     B    1 = AES-256-GCM
    kdf        B    1 = scrypt, 2 = PBKDF2-HMAC-SHA256
    payload    B    1 = Keras 2 HDF5 model file (architecture, weights, optimizer state)
    kdf params 3I   scrypt: n, r, p   |   pbkdf2: iterations, 0, 0
    salt       B + bytes (16)
    nonce      B + bytes (12)
    then       ciphertext || 16-byte GCM tag

The whole header is GCM associated data: changing any byte of it (KDF cost, payload type) fails
authentication just like a wrong key does. The original used AES-CTR without authentication, so a wrong
key silently produced garbage; here it is a clear error. KDF parameters live in the header so their cost
can change without breaking old files.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"KESTREL\0"
VERSION = 1
CIPHER_AES_256_GCM = 1
KDF_SCRYPT = 1
KDF_PBKDF2_SHA256 = 2
PAYLOAD_KERAS_H5 = 1

# scrypt n=2**14, r=8, p=1: ~16 MiB and ~50 ms per file here (interactive-login strength; the key is a
# high-entropy secret in practice). PBKDF2 default follows OWASP 2023 for SHA-256.
DEFAULT_SCRYPT = (2**14, 8, 1)
DEFAULT_PBKDF2_ITERATIONS = 600_000

_FIXED = struct.Struct(">8sHBBBIII")


class ContainerError(ValueError):
    """Not our container, unsupported version, truncated, wrong key or tampered (callers add the path)."""


@dataclass(frozen=True)
class Header:
    version: int
    cipher: int
    kdf: int
    payload: int
    kdf_params: tuple[int, int, int]
    salt: bytes
    nonce: bytes

    def pack(self) -> bytes:
        return (
            _FIXED.pack(MAGIC, self.version, self.cipher, self.kdf, self.payload, *self.kdf_params)
            + bytes([len(self.salt)]) + self.salt
            + bytes([len(self.nonce)]) + self.nonce
        )


def is_container(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def _derive(key: str, header: Header) -> bytes:
    secret = key.encode("utf-8")
    if header.kdf == KDF_SCRYPT:
        n, r, p = header.kdf_params
        if n < 2 or n & (n - 1) or n > 2**22 or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise ContainerError("bad scrypt parameters in header")
        return Scrypt(salt=header.salt, length=32, n=n, r=r, p=p).derive(secret)
    if header.kdf == KDF_PBKDF2_SHA256:
        iterations = header.kdf_params[0]
        if not 1 <= iterations <= 10_000_000:
            raise ContainerError("bad PBKDF2 iteration count in header")
        return PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=header.salt, iterations=iterations).derive(secret)
    raise ContainerError(f"unknown KDF id {header.kdf}")


def encrypt(payload: bytes, key: str, kdf: int = KDF_SCRYPT, kdf_params: tuple[int, int, int] | None = None,
            payload_type: int = PAYLOAD_KERAS_H5) -> bytes:
    """Seal `payload` under `key`; fresh random salt and nonce every call."""
    if not key:
        raise ValueError("encrypt needs a non-empty key")
    if kdf_params is None:
        kdf_params = DEFAULT_SCRYPT if kdf == KDF_SCRYPT else (DEFAULT_PBKDF2_ITERATIONS, 0, 0)
    header = Header(VERSION, CIPHER_AES_256_GCM, kdf, payload_type, tuple(kdf_params), os.urandom(16), os.urandom(12))
    raw_header = header.pack()
    return raw_header + AESGCM(_derive(key, header)).encrypt(header.nonce, payload, raw_header)


def parse_header(data: bytes) -> tuple[Header, int]:
    """(header, offset of the ciphertext)."""
    if not is_container(data):
        raise ContainerError("not a Kestrel model container")
    if len(data) < _FIXED.size + 2:
        raise ContainerError("truncated header")
    _, version, cipher, kdf, payload, a, b, c = _FIXED.unpack_from(data)
    if version != VERSION:
        raise ContainerError(f"container version {version} is not supported (this build reads {VERSION})")
    if cipher != CIPHER_AES_256_GCM:
        raise ContainerError(f"unknown cipher id {cipher}")
    off = _FIXED.size
    salt_len = data[off]
    salt = data[off + 1: off + 1 + salt_len]
    off += 1 + salt_len
    if off >= len(data):
        raise ContainerError("truncated header")
    nonce_len = data[off]
    nonce = data[off + 1: off + 1 + nonce_len]
    off += 1 + nonce_len
    if len(salt) != salt_len or len(nonce) != nonce_len or nonce_len != 12 or off + 16 > len(data):
        raise ContainerError("truncated header")
    return Header(version, cipher, kdf, payload, (a, b, c), salt, nonce), off


def decrypt(data: bytes, key: str) -> tuple[Header, bytes]:
    """(header, payload); ContainerError for a wrong key, a truncated or a modified file."""
    header, off = parse_header(data)
    if not key:
        raise ContainerError("the file is encrypted and no key was given")
    try:
        payload = AESGCM(_derive(key, header)).decrypt(header.nonce, data[off:], data[:off])
    except InvalidTag:
        raise ContainerError("authentication failed") from None
    return header, payload
