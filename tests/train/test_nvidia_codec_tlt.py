"""The original's `.tlt` (AES-CTR stream over a Keras HDF5) checked with NVIDIA's own codec as the oracle
(tests/nvidia_codec.py), on a model Kestrel trained: the `.tlt` Kestrel writes (`--format tao`) decrypts with
NVIDIA's decrypt_stream into the original's channels-first HDF5, and a `.tlt` that NVIDIA's encrypt_stream made
from Kestrel's HDF5 evaluates in Kestrel with the same top-1 and confusion matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import pytest

from kestrel_trainer.cli.main import main
from tests.nvidia_codec import nvidia_decrypt, nvidia_encrypt
from tests.train.conftest import write_spec

KEY = "tlt_encode"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def evaluate(capsys, spec, model, out, key=None) -> dict:
    argv = ["evaluate", "-e", str(spec), "-m", str(model), "-r", str(out)] + (["-k", key] if key else [])
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_tlt_files_agree_with_nvidias_codec(capsys, tmp_path, fashion_subset, monkeypatch):
    from kestrel_trainer.model_io.files import load_model, save_model

    monkeypatch.delenv("KESTREL_KEY", raising=False)
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    results = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "KESTREL_KEY"}
    train = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                            str(results)], capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stderr
    weights = results / "weights"
    hdf5 = weights / "resnet_001.hdf5"  # no key: Kestrel's plain Keras HDF5
    reference = evaluate(capsys, spec, hdf5, tmp_path / "ev_hdf5")
    assert reference["n_images"] > 0

    # NVIDIA's encrypt_stream over Kestrel's HDF5 is a .tlt as the original writes them: Kestrel evaluates it
    nvidia_tlt = weights / "nvidia.tlt"
    nvidia_tlt.write_bytes(nvidia_encrypt(hdf5.read_bytes(), KEY))
    theirs = evaluate(capsys, spec, nvidia_tlt, tmp_path / "ev_nvidia", key=KEY)
    assert theirs["top_1_accuracy"] == reference["top_1_accuracy"]
    assert theirs["confusion_matrix"] == reference["confusion_matrix"]

    # Kestrel's --format tao .tlt of the same model decrypts with NVIDIA's decrypt_stream into the original's
    # channels-first Keras HDF5, which evaluates the same
    ours = save_model(load_model(hdf5, None, compile=False), weights / "kestrel_tao.tlt", KEY, format="tao")
    plain = nvidia_decrypt(ours.read_bytes(), KEY)
    assert plain[:8] == HDF5_SIGNATURE
    decrypted = weights / "decrypted.hdf5"
    decrypted.write_bytes(plain)
    with h5py.File(decrypted, "r") as f:
        config = json.loads(f.attrs["model_config"])
    formats = {layer["config"].get("data_format") for layer in config["config"]["layers"]} - {None}
    assert formats == {"channels_first"}
    again = evaluate(capsys, spec, decrypted, tmp_path / "ev_decrypted")
    assert again["top_1_accuracy"] == reference["top_1_accuracy"]
    assert again["confusion_matrix"] == reference["confusion_matrix"]
