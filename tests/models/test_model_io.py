"""Model files: encrypted and plain round trips, atomic writes, clear errors for wrong keys and damage."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io import crypto
from kestrel_trainer.model_io.files import load_model, save_model
from kestrel_trainer.models.registry import create_model

from .specs import make_spec

KEY = "nvidia_tlt"


@pytest.fixture(scope="module")
def trained():
    """A small trained model with optimizer state (momentum slots, iteration count)."""
    model = create_model(make_spec("resnet", 10, channels=1, size=32), 3)
    model.compile(tf.keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 32, 32, 1), dtype=np.float32), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    return model


def _x():
    return np.random.default_rng(7).random((3, 32, 32, 1), dtype=np.float32)


@pytest.mark.parametrize("key", [KEY, None, ""])
def test_round_trip_gives_identical_outputs_and_optimizer_state(trained, tmp_path, key):
    written = save_model(trained, tmp_path / "resnet_001.tlt", key)
    assert written.suffix == (".tlt" if key else ".hdf5")
    loaded = load_model(written, key)
    np.testing.assert_array_equal(trained(_x(), training=False).numpy(), loaded(_x(), training=False).numpy())
    assert int(loaded.optimizer.iterations.numpy()) == int(trained.optimizer.iterations.numpy()) == 2
    for a, b in zip(trained.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [p.name for p in tmp_path.iterdir()] == [written.name], "no temp files left behind"


@pytest.mark.parametrize("key,fmt", [(KEY, "kestrel"), (None, "kestrel"), (KEY, "tao")])
def test_loading_restores_every_weight_exactly(trained, tmp_path, key, fmt):
    """Every variable (kernels, biases, BN gamma/beta and moving statistics) comes back bit for bit, by name;
    the original's .tlt (--format tao) stores them channels-first and must convert them back losslessly."""
    saved = {w.name: w.numpy() for w in trained.weights}
    assert len(saved) > 20 and any("moving_variance" in name for name in saved)
    loaded = load_model(save_model(trained, tmp_path / "resnet_001.tlt", key, format=fmt), key, compile=False)
    restored = {w.name: w.numpy() for w in loaded.weights}
    assert restored.keys() == saved.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_plain_save_says_it_is_unencrypted(trained, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        written = save_model(trained, tmp_path / "m.tlt", None)
    assert "unencrypted" in caplog.text and str(written) in caplog.text


def test_encrypted_file_does_not_contain_the_plain_model(trained, tmp_path):
    data = save_model(trained, tmp_path / "m.tlt", KEY).read_bytes()
    assert data.startswith(crypto.MAGIC)
    assert b"HDF" not in data[:200] and b"model_config" not in data and b"block_1a_conv_1" not in data


def test_wrong_key(trained, tmp_path):
    path = save_model(trained, tmp_path / "m.tlt", KEY)
    with pytest.raises(ModelFileError, match=f"wrong key or corrupt file: {path}") as err:
        load_model(path, "not-the-key")
    assert err.value.exit_code == 2


@pytest.mark.parametrize("cut", [10, 40, 1000, -1])
def test_truncated_file(trained, tmp_path, cut):
    path = save_model(trained, tmp_path / "m.tlt", KEY)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="wrong key or corrupt file"):
        load_model(path, KEY)


def test_truncated_plain_file(trained, tmp_path):
    path = save_model(trained, tmp_path / "m.hdf5", None)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="wrong key or corrupt file"):
        load_model(path, None)


@pytest.mark.parametrize("where", ["header_kdf", "ciphertext"])
def test_modified_byte_is_detected(trained, tmp_path, where):
    path = save_model(trained, tmp_path / "m.tlt", KEY)
    data = bytearray(path.read_bytes())
    index = 20 if where == "header_kdf" else len(data) // 2  # 20: inside the scrypt parameters
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="wrong key or corrupt file"):
        load_model(path, KEY)


def test_encrypted_file_without_key_says_a_key_is_needed(trained, tmp_path):
    path = save_model(trained, tmp_path / "m.tlt", KEY)
    with pytest.raises(ModelFileError, match="encrypted"):
        load_model(path, None)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.tlt", KEY)


def test_header_records_kdf_parameters_and_pbkdf2_files_open():
    payload = b"\x89HDF\r\n\x1a\n" + b"x" * 100
    sealed = crypto.encrypt(payload, KEY, kdf=crypto.KDF_PBKDF2_SHA256, kdf_params=(1000, 0, 0))
    header, _ = crypto.parse_header(sealed)
    assert (header.kdf, header.kdf_params, len(header.salt), len(header.nonce)) == (
        crypto.KDF_PBKDF2_SHA256, (1000, 0, 0), 16, 12)
    assert crypto.decrypt(sealed, KEY)[1] == payload
    scrypt_header, _ = crypto.parse_header(crypto.encrypt(payload, KEY))
    assert scrypt_header.kdf_params == crypto.DEFAULT_SCRYPT
    # fresh salt and nonce each time: the same model never gives the same bytes
    assert crypto.encrypt(payload, KEY) != crypto.encrypt(payload, KEY)


def test_failed_write_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    from kestrel_trainer.model_io import files

    path = save_model(trained, tmp_path / "m.tlt", KEY)
    old = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(OSError):
        save_model(trained, path, KEY)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["m.tlt"]
