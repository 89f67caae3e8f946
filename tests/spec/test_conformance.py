"""Every real user's spec parses unmodified, and `spec show` prints a spec that parses back equal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kestrel_trainer.spec import load_spec, parse_spec_text
from kestrel_trainer.spec.render import render_spec


def test_every_conformance_spec_passes_spec_check(conformance_specs):
    for path in conformance_specs:
        proc = subprocess.run(
            [sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        assert proc.stdout.startswith(f"ok: {path}"), proc.stdout
        assert "Traceback" not in proc.stderr


def test_spec_show_prints_resolved_values_that_round_trip(conformance_specs):
    for path in conformance_specs:
        proc = subprocess.run(
            [sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "show", "-e", str(path)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        original = load_spec(path)
        assert f"arch: \"{original.model.arch}\"" in proc.stdout
        assert "# default" in proc.stdout
        again = parse_spec_text(proc.stdout, source="shown")
        assert (again.model, again.train, again.eval) == (original.model, original.train, original.eval)


def test_seed_example_values(conformance_specs):
    seed = next(p for p in conformance_specs if p.name == "seed_example.txt")
    spec = load_spec(seed, task="train")
    assert spec.model.name == "resnet101"
    assert spec.model.input_shape == (224, 224, 3)
    assert spec.model.resize_interpolation_method == "bicubic"
    assert spec.train.optimizer.name == "sgd" and spec.train.optimizer.momentum == 0.9
    assert spec.train.lr.name == "cosine" and spec.train.lr.learning_rate == 0.04
    assert spec.train.reg.type == "L2" and spec.train.reg.scope == ("Conv2D", "Dense")
    assert spec.train.reg.weight_decay == 1.5e-05
    assert dict(spec.train.image_mean) == {"b": 103.9, "g": 116.8, "r": 123.7}
    assert spec.eval.top_k == 3
    # momentum was not written: the documented default is used and reported as such
    assert spec.model.batch_norm.momentum == 0.9
    assert "model_config.batch_norm_config.momentum" in spec.defaults_used
    assert "model_config.n_layers" not in spec.defaults_used


def test_render_of_defaults_only_spec_parses(tmp_path):
    spec = parse_spec_text("")
    assert spec.model.name == "resnet18"
    text = render_spec(spec)
    assert parse_spec_text(text).model == spec.model


def test_every_example_spec_passes_spec_check_without_warnings():
    """The specs the README and docs tell users to run (examples/specs) parse, validate and warn about nothing."""
    examples = sorted((Path(__file__).resolve().parents[2] / "examples" / "specs").glob("*.txt"))
    assert len(examples) >= 2
    for path in examples:
        proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path),
                               "--task", "train"], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        assert "warning" not in proc.stderr.lower(), f"{path.name}: {proc.stderr}"
