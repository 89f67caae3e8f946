"""CLI polish (issue 32, item 4): every flag has help, closed sets are `choices`, -k says what it does per command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from kestrel_operator.cli import build_parser as operator_parser
from kestrel_trainer.cli.main import build_parser
from kestrel_trainer.cli.tao import main as tao_main  # noqa: F401 - the TAO front end builds on the same parser


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, action


def _find(parser: argparse.ArgumentParser, command: str, flag: str) -> argparse.Action:
    for path, action in _actions(parser):
        if path == (command,) and flag in action.option_strings:
            return action
    raise AssertionError(f"{command} {flag} not found")


@pytest.mark.parametrize("parser", [build_parser(), operator_parser()], ids=["kestrel", "kestrel-operator"])
def test_every_flag_has_help(parser):
    missing = [f"{' '.join(path)} {action.option_strings or action.dest}" for path, action in _actions(parser)
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


def test_train_e_and_r_have_help():
    out = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    flat = " ".join(out.split())
    assert "-e SPEC, --experiment_spec_file SPEC, --experiment_spec SPEC the experiment spec file" in flat
    assert "-r RESULTS, --results_dir RESULTS run folder" in flat


@pytest.mark.parametrize(("command", "flag", "values"), [
    ("prune", "-n", ("max", "L2", "off")),
    ("prune", "-eq", ("union", "intersection", "arithmetic_mean", "geometric_mean")),  # the original's four
    ("export", "--data_type", ("fp32", "fp16", "int8")),
    ("export", "--target", ("tensorrt", "onnxruntime")),
    ("gen_trt_engine", "--data_type", ("fp32", "fp16", "int8")),
])
def test_closed_sets_are_choices(command, flag, values):
    assert tuple(_find(build_parser(), command, flag).choices) == values


@pytest.mark.parametrize(("argv", "bad"), [
    (["prune", "-m", "m.hdf5", "-o", "o.hdf5", "-n", "l2"], "-n/--normalizer"),
    (["prune", "-m", "m.hdf5", "-o", "o.hdf5", "-eq", "mean"], "-eq/--equalization_criterion"),
    (["export", "-m", "m.hdf5", "--data_type", "int4"], "--data_type"),
    (["export", "-m", "m.hdf5", "--target", "tflite"], "--target"),
])
def test_a_value_outside_the_set_is_one_usage_error(argv, bad):
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"argument {bad}: invalid choice" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("kestrel: error: ")
    assert "Traceback" not in proc.stderr


def test_choices_match_what_the_commands_validate():
    """The CLI's sets are the pruner's and exporter's own (one place): what they accept, no more."""
    from kestrel_trainer.export import run as export_run
    from kestrel_trainer.prune import rule

    assert tuple(_find(build_parser(), "prune", "-n").choices) == rule.NORMALIZERS
    assert tuple(_find(build_parser(), "prune", "-eq").choices) == rule.CRITERIA
    assert tuple(_find(build_parser(), "export", "--data_type").choices) == export_run.DATA_TYPES
    assert tuple(_find(build_parser(), "export", "--target").choices) == export_run.TARGETS


@pytest.mark.parametrize("command", ["evaluate", "inference", "gen_trt_engine"])
def test_key_help_of_reading_commands_says_nothing_about_writing(command):
    text = _find(build_parser(), command, "-k").help
    assert "plain .hdf5" not in text and "written" not in text
    assert "KESTREL" in text  # still points at the environment variable


@pytest.mark.parametrize("command", ["train", "prune", "export"])
def test_key_help_of_writing_commands_says_how_models_are_written(command):
    assert "plain .hdf5" in _find(build_parser(), command, "-k").help
