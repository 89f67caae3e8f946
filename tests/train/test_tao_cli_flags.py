"""evaluate and inference with the original's command lines (issue 30, item 5): the model on a read-only mount,
`-i` together with `-d`, `-b` 1 by default, and the input size taken from the model file, not the spec.

The read-only case is a real read-only bind mount (`unshare -m`, as root) or a folder without write permission
(as another user): what a pod with a read-only model volume sees.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_trainer.cli.main import build_parser, main
from tests.conftest import import_fashion_subset
from tests.export.conftest import save_run, tiny_model, write_spec

KEY = "flags-eval-key"
CLI = [sys.executable, "-m", "kestrel_trainer.cli.main"]


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    return import_fashion_subset(tmp_path_factory.mktemp("fashion") / "fm", per_class=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion) -> Path:
    """RUN/weights/model_001.tlt and RUN/classmap.json: a 1x32x32 model as training leaves it."""
    run = tmp_path_factory.mktemp("ro") / "run"
    save_run(tiny_model(), run, fashion, key=KEY)
    return run


def run_read_only(folder: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`kestrel ARGV` in `cwd` with `folder` read-only for the process."""
    env = dict(os.environ, KESTREL_KEY=KEY)
    if os.geteuid() == 0:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), *CLI, *argv], cwd=cwd,
                              capture_output=True, text=True, env=env)
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
    try:
        for path in modes:
            path.chmod(0o555)
        return subprocess.run([*CLI, *argv], cwd=cwd, capture_output=True, text=True, env=env)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_evaluate_without_r_works_with_the_model_on_a_read_only_mount(tmp_path, run_dir, fashion):
    spec = write_spec(tmp_path, fashion)
    model = run_dir / "weights" / "model_001.tlt"
    before = sorted(str(p) for p in run_dir.rglob("*"))

    work = tmp_path / "work"
    work.mkdir()
    ev = run_read_only(run_dir, ["evaluate", "-e", str(spec), "-m", str(model)], cwd=work)
    assert ev.returncode == 0, ev.stderr
    results = work / "evaluate" / "results.json"
    assert f"results: {results}" in ev.stdout  # it says where it wrote
    data = json.loads(results.read_text())
    assert f"Evaluation Top K accuracy: {data['top_3_accuracy']}" in ev.stdout and data["n_images"] == 40

    # the working directory read-only too: the report is printed (all the original does without -r)
    ev = run_read_only(run_dir, ["evaluate", "-e", str(spec), "-m", str(model)], cwd=run_dir)
    assert ev.returncode == 0, ev.stderr
    assert "Evaluation Top K accuracy:" in ev.stdout and "results: printed only" in ev.stdout
    assert sorted(str(p) for p in run_dir.rglob("*")) == before  # nothing was written beside the model


def test_inference_takes_an_image_and_a_folder_in_one_run(capsys, tmp_path, run_dir, fashion):
    assert build_parser().parse_args(["inference", "-e", "s", "-m", "m", "-d", "d"]).batch_size == 1  # the original's
    spec = write_spec(tmp_path, fashion)
    folder = fashion / "test"
    image = sorted(folder.rglob("*.png"))[5]
    rc = main(["inference", "-e", str(spec), "-m", str(run_dir / "weights" / "model_001.tlt"), "-k", KEY,
               "-i", str(image), "-d", str(folder), "-r", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    label = int(out.split("Class label = ")[1].split()[0])
    name = out.split("Class name = ")[1].split("\n")[0]
    classmap = json.loads((fashion / "classmap.json").read_text())
    assert classmap[name] == label
    with open(tmp_path / "out" / "result.csv", newline="") as fh:
        rows = {row[0]: row[1] for row in csv.reader(fh)}
    on_disk = {os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
               if f.lower().endswith((".png", ".jpg", ".jpeg"))}
    assert set(rows) == on_disk
    assert rows[str(image)] == name  # the same image gets the same class either way
    status = [json.loads(line) for line in (tmp_path / "out" / "status.json").read_text().splitlines()]
    assert [s["status"] for s in status] == ["STARTED", "SUCCESS"]


def test_inference_needs_an_image_or_a_folder(capsys, tmp_path, run_dir, fashion):
    spec = write_spec(tmp_path, fashion)
    assert main(["inference", "-e", str(spec), "-m", str(run_dir / "weights" / "model_001.tlt"), "-k", KEY]) == 2
    err = capsys.readouterr().err
    assert "inference needs -i IMAGE and/or -d DIR" in err and len(err.strip().splitlines()) == 1


def test_the_input_size_comes_from_the_model_file(capsys, tmp_path, run_dir, fashion):
    """The spec says 1,64,64; the model takes 1,32,32: the result is the 32x32 evaluation, for the Keras model
    and for its ONNX exported with that spec, and the mismatch is named."""
    model = run_dir / "weights" / "model_001.tlt"
    right = write_spec(tmp_path, fashion, size=32)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    wrong = write_spec(wrong, fashion, size=64)
    onnx_path = tmp_path / "m.onnx"  # export takes the model's size too: its parity check runs on 32x32 images
    assert main(["export", "-m", str(model), "-k", KEY, "-e", str(wrong), "-o", str(onnx_path)]) == 0
    assert f"{model} takes 1,32,32 images" in capsys.readouterr().err

    def evaluate(spec: Path, model_path: Path, name: str) -> tuple[dict, str]:
        rc = main(["evaluate", "-e", str(spec), "-m", str(model_path), "-k", KEY, "-r", str(tmp_path / name),
                   "-cm", str(fashion / "classmap.json")])
        err = capsys.readouterr().err
        assert rc == 0, err
        return json.loads((tmp_path / name / "results.json").read_text()), err

    expected, _ = evaluate(right, model, "right")
    for model_path, name in ((model, "keras"), (onnx_path, "onnx")):
        got, err = evaluate(wrong, model_path, name)
        assert f"{model_path} takes 1,32,32 images" in err and "input_image_size 1,64,64" in err
        assert got["confusion_matrix"] == expected["confusion_matrix"]
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)


def test_evaluate_accepts_the_originals_placeholder_flags(capsys, tmp_path, run_dir, fashion):
    """The original's evaluate parser takes -i/-l/-b (placeholders for its deploy tools) and ignores them."""
    spec = write_spec(tmp_path, fashion)
    rc = main(["evaluate", "-e", str(spec), "-m", str(run_dir / "weights" / "model_001.tlt"), "-k", KEY,
               "-r", str(tmp_path / "ev"), "-i", str(fashion / "test"), "-l", str(tmp_path), "-b", "4"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "-i/--image_dir, -l/--label_dir, -b/--batch_size: accepted as the original accepts them" in err
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["n_images"] == 40  # eval_config's data
