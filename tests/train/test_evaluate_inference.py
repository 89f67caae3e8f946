"""evaluate's metrics equal scikit-learn's on the same predictions; inference writes one row per image."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from kestrel_trainer.evaluate import classification_metrics, classification_report_text, format_report
from tests.train.conftest import write_spec

KEY = "eval-key"


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    n, c = 500, 6
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels] * rng.random((n, 1))
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = [f"class_{i}" for i in range(c)]
    m = classification_metrics(scores, labels, names, top_k=3)
    pred = scores.argmax(axis=1)
    assert m["top_1_accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["top_3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, scores, k=3))
    assert m["loss"] == pytest.approx(skm.log_loss(labels, scores), rel=1e-6)
    np.testing.assert_array_equal(np.array(m["confusion_matrix"]), skm.confusion_matrix(labels, pred))
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, zero_division=0)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=avg, zero_division=0)
        got = m[f"{avg}_avg"]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
    text = format_report(m)
    assert "weighted avg" in text and "class_5" in text
    # the original prints scikit-learn's report; ours is the same text, computed without scikit-learn
    assert classification_report_text(m) == skm.classification_report(labels, pred, labels=list(range(c)),
                                                                       target_names=names, zero_division=0)


def test_confusion_matrix_follows_a_custom_classmap():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = classification_metrics(scores, [0, 1, 1], ["zebra", "ant"], top_k=1)
    assert m["classes"] == ["zebra", "ant"]
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]


@pytest.mark.slow
def test_evaluate_and_inference_end_to_end(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    results = tmp_path / "r"
    env = dict(os.environ, KESTREL_KEY=KEY)
    cli = [sys.executable, "-m", "kestrel_trainer.cli.main"]
    train = subprocess.run(cli + ["train", "-e", str(spec), "-r", str(results)], capture_output=True, text=True,
                           env=env)
    assert train.returncode == 0, train.stderr
    model = results / "weights" / "resnet_001.tlt"
    ev = subprocess.run(cli + ["evaluate", "-e", str(spec), "-m", str(model), "-r", str(tmp_path / "ev")],
                        capture_output=True, text=True, env=env)
    assert ev.returncode == 0, ev.stderr
    data = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert data["n_images"] == 80 and data["top_k"] == 3 and len(data["confusion_matrix"]) == 10
    assert "top-3 accuracy" in ev.stdout
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()
    # the original's lines come first, with the same numbers, and status.json records the run as it does
    assert ev.stdout.startswith(f"Evaluation Loss: {data['loss']}\nEvaluation Top K accuracy: {data['top_3_accuracy']}")
    assert "Confusion Matrix\n" in ev.stdout and "Classification Report\n" in ev.stdout
    ev_status = [json.loads(line) for line in (tmp_path / "ev" / "status.json").read_text().splitlines()]
    assert [(s["status"], s["message"]) for s in ev_status] == [
        ("STARTED", "Starting evaluation."), ("SUCCESS", "Evaluation finished successfully.")]
    assert ev_status[-1]["kpi"] == {"top_k_accuracy": pytest.approx(data["top_3_accuracy"])}
    inf = subprocess.run(cli + ["inference", "-e", str(spec), "-m", str(model), "-d", str(fashion_subset / "test"),
                                "-r", str(tmp_path / "inf"), "--top_k", "2"], capture_output=True, text=True, env=env)
    assert inf.returncode == 0, inf.stderr
    inf_status = [json.loads(line) for line in (tmp_path / "inf" / "status.json").read_text().splitlines()]
    assert [s["status"] for s in inf_status] == ["STARTED", "SUCCESS"]
    rows = list(csv.reader((tmp_path / "inf" / "result.csv").open()))
    assert len(rows) == 80  # one row per image, no header
    classes = json.loads((results / "classmap.json").read_text())
    for row in rows:
        assert os.path.exists(row[0]) and row[1] in classes and 0.0 <= float(row[2]) <= 1.0 and len(row) == 5
    one = subprocess.run(cli + ["inference", "-e", str(spec), "-m", str(model), "-i", rows[0][0]],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0 and rows[0][1] in one.stdout
    assert f"Class label = {classes[rows[0][1]]}\nClass name = {rows[0][1]}\n" in one.stdout  # the original's lines
    wrong = subprocess.run(cli + ["evaluate", "-e", str(spec), "-m", str(model), "-k", "nope"], capture_output=True,
                           text=True)
    assert wrong.returncode == 2 and f"wrong key or corrupt file: {model}" in wrong.stderr
    truncated = tmp_path / "cut.tlt"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    cut = subprocess.run(cli + ["evaluate", "-e", str(spec), "-m", str(truncated)], capture_output=True, text=True,
                         env=env)
    assert cut.returncode == 2 and f"wrong key or corrupt file: {truncated}" in cut.stderr
    assert "Traceback" not in wrong.stderr + cut.stderr
