"""The .etlt the original's deploy tools read: checked against an independent implementation of the facts
file's recipe (PBKDF2-HMAC-SHA256 with the published salt, 100,000 iterations; 16-byte nonce; AES-256-CTR;
int32 LE input-name length, 0 for ONNX) written here with `cryptography`."""

from __future__ import annotations

import struct

import onnx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.export import onnx_model
from tests.export.conftest import tiny_model

PUBLISHED_SALT = "cb3cdc2e858689da908563056a00dbed09ac076c785543c4610f06d31b53a732"


def independent_key(user_key: str) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(PUBLISHED_SALT), iterations=100_000)
    return kdf.derive(user_key.encode())


def independent_decrypt_etlt(data: bytes, user_key: str) -> tuple[bytes, bytes]:
    (name_len,) = struct.unpack("<i", data[:4])
    name, rest = data[4:4 + name_len], data[4 + name_len:]
    nonce, cipher_text = rest[:16], rest[16:]
    dec = Cipher(algorithms.AES(independent_key(user_key)), modes.CTR(nonce)).decryptor()
    return name, dec.update(cipher_text) + dec.finalize()


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return onnx_model.keras_to_onnx(tiny_model()).SerializeToString()


def test_written_etlt_decrypts_with_the_independent_recipe(tmp_path, onnx_bytes):
    path = tmp_path / "m.etlt"
    path.write_bytes(onnx_model.encode(onnx_bytes, str(path), "nvidia_tlt"))
    data = path.read_bytes()
    assert data[:4] == b"\x00\x00\x00\x00"  # ONNX: no input-node name
    name, plain = independent_decrypt_etlt(data, "nvidia_tlt")
    assert name == b"" and plain == onnx_bytes
    assert onnx.load_model_from_string(plain).graph.output[0].name == "predictions"
    assert onnx_model.read_onnx_bytes(str(path), "nvidia_tlt") == onnx_bytes  # and our reader round-trips it


def test_fixed_vector_matches_the_independent_encryption():
    """A known key, nonce and plaintext give exactly the bytes the independent implementation gives."""
    from kestrel_trainer.model_io.tao_crypto import pack_etlt

    nonce = bytes(range(16))
    plain = b"\x08\x07" + bytes(range(200))
    enc = Cipher(algorithms.AES(independent_key("tlt_encode")), modes.CTR(nonce)).encryptor()
    expected = struct.pack("<i", 0) + nonce + enc.update(plain) + enc.finalize()
    assert pack_etlt(plain, "tlt_encode", nonce=nonce) == expected


def test_wrong_key_is_one_clear_error(tmp_path, onnx_bytes):
    path = tmp_path / "m.etlt"
    path.write_bytes(onnx_model.encode(onnx_bytes, str(path), "right"))
    with pytest.raises(ModelFileError, match=r"wrong key or corrupt file: .*m\.etlt \(the decrypted bytes are not an "
                                             r"ONNX model\)"):
        onnx_model.read_onnx_bytes(str(path), "wrong")


def test_truncated_onnx_is_refused(tmp_path, onnx_bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    with pytest.raises(ModelFileError, match="is not an ONNX model"):
        onnx_model.read_onnx_bytes(str(path), None)
