"""`kestrel prune` end to end: the encrypted pruned model, prune_report.json, `model info -m`, retraining,
and every kind of bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os

import pytest

from kestrel_trainer.cli.main import main
from kestrel_trainer.model_io.files import HDF5_SIGNATURE, save_model
from kestrel_trainer.models.registry import create_model
from tests.models.specs import make_spec

from .conftest import expected_params, spread_filters

KEY = "prune-test-key"
SPEC = make_spec("resnet", 10, channels=1, size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet10 whose filter norms are spread like a trained model's, saved encrypted."""
    model = create_model(SPEC, 3)
    spread_filters(model, seed=4)
    folder = tmp_path_factory.mktemp("model")
    return save_model(model, folder / "resnet_010.tlt", KEY), model.count_params()


def _params_from_info(out: str) -> int:
    return int(out.split("parameters: ")[1].split(" total")[0].replace(",", ""))


def test_prune_writes_the_model_and_report_and_model_info_agrees(trained, tmp_path, capsys, monkeypatch):
    model_path, full_params = trained
    monkeypatch.setenv("KESTREL_KEY", KEY)
    out = tmp_path / "pruned" / "pruned.tlt"
    assert main(["prune", "-m", str(model_path), "-o", str(out), "-pth", "0.5", "-eq", "union", "-n", "max"]) == 0
    table = capsys.readouterr().out
    assert out.read_bytes()[:8] != HDF5_SIGNATURE  # encrypted, since a key was given
    report = json.loads((out.parent / "prune_report.json").read_text())
    after = report["parameters"]["after"]
    assert report["parameters"]["before"] == full_params and after < full_params
    assert f"parameters: {full_params:,} -> {after:,}" in table
    assert report["file_bytes"]["after"] == os.path.getsize(out) < report["file_bytes"]["before"]
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["predictions"]["kept"] == rows["predictions"]["total"] == 3  # the output layer is kept
    # The residual Add ties block_1a's last conv and its projection shortcut into one group with one width
    # (every stage's first block projects, as in the original).
    assert rows["block_1a_conv_2"]["kept"] == rows["block_1a_conv_shortcut"]["kept"]

    assert main(["model", "info", "-m", str(out), "--brief"]) == 0
    info = capsys.readouterr().out
    assert _params_from_info(info) == after

    # Retraining: train's pretrained_model_path adopts the pruned architecture with its weights.
    from kestrel_trainer.models.weights import build_with_pretrained
    from kestrel_trainer.predict import load_for_prediction

    pruned = load_for_prediction(str(out), KEY)
    assert expected_params(pruned) == after
    model, load = build_with_pretrained(SPEC, 3, str(out), KEY)
    assert load.rebuilt_from_file and model.count_params() == after
    assert model.get_layer("block_3a_conv_1").filters == pruned.get_layer("block_3a_conv_1").filters < 256


def test_without_a_key_the_model_is_plain_hdf5(trained, tmp_path, monkeypatch):
    from kestrel_trainer.model_io.files import load_model

    model_path, _ = trained
    plain_in = save_model(load_model(model_path, KEY, compile=False), tmp_path / "in.hdf5", None)
    monkeypatch.delenv("KESTREL_KEY", raising=False)
    out = tmp_path / "b" / "pruned.tlt"
    assert main(["prune", "-m", str(plain_in), "-o", str(out)]) == 0
    written = out.with_suffix(".hdf5")
    assert written.read_bytes()[:8] == HDF5_SIGNATURE and not out.exists()
    assert json.loads((out.parent / "prune_report.json").read_text())["output"] == str(written)


BAD = {
    "threshold above 1": (["-pth", "1.5"], "pruning_threshold must be in [0, 1]"),
    "threshold below 0": (["-pth", "-0.1"], "pruning_threshold must be in [0, 1]"),
    "granularity 0": (["-pg", "0"], "pruning_granularity must be >= 1"),
    "min filters 0": (["-nf", "0"], "min_num_filters must be >= 1"),
    "unknown normalizer": (["-n", "l2"], "prune: argument -n/--normalizer: invalid choice: 'l2' (choose from"),
    "unknown criterion": (["-eq", "mean"], "argument -eq/--equalization_criterion: invalid choice: 'mean'"),
    "unknown excluded layer": (["-el", "block_1a_conv1"], "no layer named 'block_1a_conv1'; close matches: "
                                                            "block_1a_conv_1"),
    "wrong key": (["-k", "not-the-key"], "wrong key or corrupt file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(trained, tmp_path, capsys, monkeypatch, case):
    model_path, _ = trained
    monkeypatch.setenv("KESTREL_KEY", KEY)
    extra, message = BAD[case]
    out = tmp_path / "out"
    out.mkdir()
    assert main(["prune", "-m", str(model_path), "-o", str(out / "pruned.tlt"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(out.iterdir()) == []


def test_bad_paths(trained, tmp_path, capsys, monkeypatch):
    model_path, _ = trained
    monkeypatch.setenv("KESTREL_KEY", KEY)
    before = sorted(os.listdir(model_path.parent))
    not_a_model = tmp_path / "notes.tlt"
    not_a_model.write_text("hello")
    cases = [
        (["-m", str(not_a_model), "-o", str(tmp_path / "x.tlt")], "wrong key or not a model file"),
        (["-m", str(tmp_path / "missing.tlt"), "-o", str(tmp_path / "x.tlt")], "not found"),
        (["-m", str(model_path), "-o", str(model_path)], "is the input model"),
        (["-m", str(model_path), "-o", str(tmp_path)], "is a directory"),
    ]
    for argv, message in cases:
        assert main(["prune", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(os.listdir(model_path.parent)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tlt"]
