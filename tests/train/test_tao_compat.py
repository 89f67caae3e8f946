"""Training behaves as the original for its users' flags: --num_processes -1, --init_epoch with a pretrained file."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

import pytest

from kestrel_trainer.cli.common import resolve_processes
from kestrel_trainer.cli.main import build_parser
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.train.checkpoints import choose_resume
from kestrel_trainer.train.launcher import rank_arguments
from tests.train.conftest import write_spec

KEY = "test-key-123"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "-e", "s.txt", "-r", "out", *argv])


def test_num_processes_minus_one_means_as_many_as_gpus():
    """The original's default -1: one rank per GPU (we used to run -1 ranks, negative steps in --dry-run)."""
    assert resolve_processes(_args("--gpus", "4", "--num_processes", "-1")) == 4
    assert resolve_processes(_args("--gpus", "4")) == 4
    assert resolve_processes(_args("--gpus", "4", "-np", "2")) == 2
    argv = rank_arguments(_args("--gpus", "2", "--num_processes", "-1"))
    assert argv[argv.index("--num_processes") + 1] == "2"
    with pytest.raises(KestrelError, match="--num_processes must be >= 1, or -1"):
        resolve_processes(_args("--gpus", "2", "--num_processes", "-3"))


def test_gpus_zero_is_cpu_ranks_as_the_operator_renders_them():
    """`gpus: 0, numProcesses: 2` in a ClassificationTrain renders `--gpus 0 --num_processes 2` (the real-node
    e2e caught a refusal of it): 2 CPU ranks; with -1, one process."""
    assert resolve_processes(_args("--gpus", "0", "--num_processes", "2")) == 2
    assert resolve_processes(_args("--gpus", "0")) == 1
    with pytest.raises(KestrelError, match="--gpus must be >= 0"):
        resolve_processes(_args("--gpus", "-1"))


def test_dry_run_with_num_processes_minus_one_shows_the_gpus_ranks(tmp_path, fashion_subset, capsys):
    spec = write_spec(tmp_path, fashion_subset, epochs=2)
    args = build_parser().parse_args(["train", "-e", str(spec), "-r", str(tmp_path / "r"), "--dry-run",
                                      "--gpus", "2", "--num_processes", "-1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    # 80 training images over 2 ranks: 40 each, in batches of 16 -> 3 steps (the last one partial)
    assert "schedule: 2 epochs x 3 steps of 16 per rank on 2 rank(s)" in out


def test_init_epoch_takes_the_pretrained_file_when_the_results_folder_has_none(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    chosen = choose_resume(str(weights), "resnet", 6, "/models/resnet_005.tlt")
    assert (chosen.path, chosen.epochs_done, chosen.from_pretrained) == ("/models/resnet_005.tlt", 5, True)
    (weights / "resnet_005.tlt").write_bytes(b"x")  # both: the results folder's checkpoint of epoch 5 wins
    chosen = choose_resume(str(weights), "resnet", 6, "/models/resnet_005.tlt")
    assert chosen.path == str(weights / "resnet_005.tlt") and not chosen.from_pretrained
    assert choose_resume(str(weights), "resnet", 1, "/models/resnet_005.tlt") is None  # --init_epoch 1: new run
    with pytest.raises(KestrelError, match="pretrained_model_path"):
        choose_resume(str(weights), "resnet", 9, "")


@pytest.mark.slow
def test_init_epoch_resumes_from_pretrained_model_path_as_the_original(tmp_path, fashion_subset):
    """Run A trains epoch 1; run B (another folder) resumes it the original's way and continues the schedule."""
    env = dict(os.environ, KESTREL_KEY=KEY)

    def train(spec, results, *extra):
        return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                               str(results), *extra], capture_output=True, text=True, env=env, timeout=900)

    (tmp_path / "a").mkdir()
    first = train(write_spec(tmp_path / "a", fashion_subset, epochs=1), tmp_path / "ra")
    assert first.returncode == 0, first.stderr
    checkpoint = tmp_path / "ra" / "weights" / "resnet_001.tlt"
    spec = write_spec(tmp_path, fashion_subset, epochs=2)
    text = spec.read_text().replace("train_config {", f'train_config {{\n  pretrained_model_path: "{checkpoint}"', 1)
    spec.write_text(text)
    second = train(spec, tmp_path / "rb", "--init_epoch", "2")
    assert second.returncode == 0, second.stderr
    assert f"resuming from {checkpoint} (--init_epoch with pretrained_model_path, as the original)" in second.stderr
    assert sorted(p.name for p in (tmp_path / "rb" / "weights").iterdir()) == ["resnet_002.tlt"]
    rows = list(csv.DictReader((tmp_path / "rb" / "training.csv").open()))
    # cosine from the spec (0.05, min_lr_ratio 0.01): at the end of epoch 2 of 2 the rate is 0.05 * 0.01.
    # A schedule restarted at 0 would be half-way (p = 0.5) instead.
    assert [r["epoch"] for r in rows] == ["2"] and float(rows[0]["lr"]) == pytest.approx(0.05 * 0.01, rel=1e-4)


def test_format_tao_reaches_every_rank_and_needs_a_key(tmp_path, fashion_subset):
    argv = rank_arguments(_args("--format", "tao", "--gpus", "2"))
    assert argv[argv.index("--format") + 1] == "tao"
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    env = {k: v for k, v in os.environ.items() if k != "KESTREL_KEY"}
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(tmp_path / "r"), "--format", "tao"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2 and "--format tao writes the original's encrypted .tlt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_device_flags_of_evaluate_are_not_silently_ignored_on_cpu(caplog):
    """--gpu_index/--use_amp do what the original's launcher does on a GPU; without one they say so."""
    import logging

    from kestrel_trainer.cli.common import apply_device_flags

    args = build_parser().parse_args(["evaluate", "-e", "s.txt", "--use_amp", "--gpu_index", "1"])
    with caplog.at_level(logging.WARNING):
        apply_device_flags(args)
    assert "on the CPU: --gpu_index/--use_amp have no effect" in caplog.text
