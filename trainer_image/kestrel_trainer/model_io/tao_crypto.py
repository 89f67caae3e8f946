"""The original tool's encryption, for reading (and, on request, writing) the files its users have.

Recipe (its public `encoding` module): key = PBKDF2-HMAC-SHA256(user key bytes, fixed salt, 100,000
iterations, 32 bytes); stream = 16-byte random nonce, then AES-256-CTR(key, nonce) of the plain bytes. A TF1
`.tlt` Keras model is that stream over the model's HDF5 file. An `.etlt` is an int32 little-endian length of
an input-node name (0 for ONNX), the name, then that stream over the ONNX (or UFF) bytes.

There is no authentication: a wrong key decrypts to garbage without error. Callers detect it by checking
that the plaintext parses as what it should be (HDF5 signature, an ONNX protobuf), and say so.
Our own files use the authenticated container in crypto.py; this module exists for compatibility only.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

SALT = bytes.fromhex("cb3cdc2e858689da908563056a00dbed09ac076c785543c4610f06d31b53a732")
ITERATIONS = 100_000
NONCE_BYTES = 16
_NAME_LEN = struct.Struct("<i")


@lru_cache(maxsize=8)
def derive_key(key: str) -> bytes:
    """The 32-byte AES key for a user key (cached: PBKDF2 at 100,000 iterations costs ~50 ms)."""
    if not key:
        raise ValueError("the original's encryption needs a non-empty key")
    return PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SALT, iterations=ITERATIONS).derive(
        key.encode("utf-8"))


def _ctr(key: str, nonce: bytes):
    return Cipher(algorithms.AES(derive_key(key)), modes.CTR(nonce))


def encrypt_stream(plain: bytes, key: str, nonce: bytes | None = None) -> bytes:
    """nonce || AES-256-CTR(plain); a fresh random nonce unless one is given (tests)."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    enc = _ctr(key, nonce).encryptor()
    return nonce + enc.update(plain) + enc.finalize()


def decrypt_stream(data: bytes, key: str) -> bytes:
    """The plain bytes of nonce || ciphertext. Never fails on a wrong key: check what comes out."""
    if len(data) < NONCE_BYTES:
        raise ValueError("too short for the original's encrypted stream")
    dec = _ctr(key, data[:NONCE_BYTES]).decryptor()
    return dec.update(data[NONCE_BYTES:]) + dec.finalize()


def pack_etlt(model_bytes: bytes, key: str, input_name: str = "", nonce: bytes | None = None) -> bytes:
    """An `.etlt`: int32 LE name length, name (empty for ONNX), encrypted stream of the model bytes."""
    name = input_name.encode("utf-8")
    return _NAME_LEN.pack(len(name)) + name + encrypt_stream(model_bytes, key, nonce)


def unpack_etlt(data: bytes, key: str) -> tuple[str, bytes]:
    """(input node name, decrypted model bytes) of an `.etlt`; ValueError when the layout is impossible."""
    if len(data) < _NAME_LEN.size:
        raise ValueError("too short for an .etlt file")
    (length,) = _NAME_LEN.unpack_from(data)
    start = _NAME_LEN.size + length
    if length < 0 or start + NONCE_BYTES > len(data):
        raise ValueError("not an .etlt file (bad input-name length)")
    name = data[_NAME_LEN.size:start].decode("utf-8", errors="replace")
    return name, decrypt_stream(data[start:], key)
