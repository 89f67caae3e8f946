"""`prune --format tao` writes the original's .tlt; `-r` gets the original's status.json and the original's
"Pruning ratio" line (issue 30, item 5).

Expectations are independent of Kestrel's code: the .tlt is decrypted with NVIDIA's own codec (decrypt_stream of
`nvidia-eff-tao-encryption`, tests/nvidia_codec.py) and must be a channels-first Keras HDF5; the ratio is
parameters after / before by the textbook formulas (tests/prune/conftest.expected_params), which is what the
original's `pruned_model.count_params() / final_model.count_params()` counts.
"""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest

from kestrel_trainer.cli.main import main
from kestrel_trainer.model_io.files import HDF5_SIGNATURE, save_model
from kestrel_trainer.models.registry import create_model
from tests.models.specs import make_spec
from tests.nvidia_codec import nvidia_decrypt

from .conftest import expected_params, spread_filters

KEY = "prune-tao-key"
SPEC = make_spec("resnet", 10, channels=1, size=32)
RATIO_LINE = "Pruning ratio (pruned model / original model): "


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = create_model(SPEC, 3)
    spread_filters(model, seed=4)
    return save_model(model, tmp_path_factory.mktemp("model") / "resnet_010.tlt", KEY), model


def test_format_tao_writes_the_originals_tlt_with_its_ratio_line_and_status(trained, tmp_path, capsys, monkeypatch):
    model_path, model = trained
    monkeypatch.setenv("KESTREL_KEY", KEY)
    out, results = tmp_path / "pruned.tlt", tmp_path / "logs"
    assert main(["prune", "-m", str(model_path), "-o", str(out), "-pth", "0.5", "--format", "tao",
                 "--results_dir", str(results)]) == 0
    stdout = capsys.readouterr().out

    plain = nvidia_decrypt(out.read_bytes(), KEY)
    assert plain[:8] == HDF5_SIGNATURE
    with h5py.File(io.BytesIO(plain), "r") as f:
        config = json.loads(f.attrs["model_config"])
    formats = {layer["config"].get("data_format") for layer in config["config"]["layers"]} - {None}
    assert formats == {"channels_first"}  # the original's layout

    from kestrel_trainer.predict import load_for_prediction

    pruned = load_for_prediction(str(out), KEY)
    ratio = expected_params(pruned) / expected_params(model)
    assert ratio < 1.0
    line = next(line for line in stdout.splitlines() if line.startswith(RATIO_LINE))
    assert float(line[len(RATIO_LINE):]) == pytest.approx(ratio, rel=1e-12)

    status = [json.loads(s) for s in (results / "status.json").read_text().splitlines()]
    assert [(s["status"], s["message"]) for s in status] == [
        ("RUNNING", line), ("SUCCESS", "Pruning finished successfully.")]
    kpi = status[0]["kpi"]
    assert kpi["pruning_ratio"] == pytest.approx(ratio) and kpi["param_count"] == expected_params(pruned)
    assert kpi["size"] == out.stat().st_size

    # the same pruning in Kestrel's own format gives the same network: same outputs on the same inputs
    assert main(["prune", "-m", str(model_path), "-o", str(tmp_path / "ours.tlt"), "-pth", "0.5"]) == 0
    ours = load_for_prediction(str(tmp_path / "ours.tlt"), KEY)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), ours.predict(x, verbose=0), atol=1e-5)


def test_format_tao_without_a_key_is_one_line(trained, tmp_path, capsys, monkeypatch):
    from kestrel_trainer.model_io.files import load_model

    model_path, _ = trained
    plain = save_model(load_model(model_path, KEY, compile=False), tmp_path / "in.hdf5", None)
    capsys.readouterr()  # its "no key given" warning is not what this test reads
    monkeypatch.delenv("KESTREL_KEY", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["prune", "-m", str(plain), "-o", str(out / "p.tlt"), "--format", "tao", "-r", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--format tao writes the original's encrypted .tlt: give the key" in err
    assert len(err.strip().splitlines()) == 1, err
    status = [json.loads(s) for s in (out / "status.json").read_text().splitlines()]
    assert [s["status"] for s in status] == ["FAILURE"]
    assert sorted(p.name for p in out.iterdir()) == ["status.json"]
