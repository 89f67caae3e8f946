"""Contract between operator and trainer: every command line the operator renders parses in the trainer.

The lines come from the operator itself (its renderer and builders, never copied strings): every resource
in examples/k8s rendered together, the resource bodies the operator tests build, and a ClassificationPrune
for each normalizer / equalization criterion the CRD allows. Each trainer command (`kestrel ...`, after
`mpirun ...` when there is one) must be accepted by `kestrel_trainer.cli.main.build_parser()`; for prune
the rendered options must also pass the pruner's own validation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest
import yaml

from kestrel_operator.render import Renderer
from kestrel_operator.resources import defaults as op_defaults
from kestrel_operator.settings import Settings
from kestrel_trainer.cli.main import build_parser
from tests.operator.conftest import EXAMPLES, TRAIN_SPEC, prune_body, spec_with_parallelism, train_body
from tests.operator.test_manifests import BODIES, plan_for

SETTINGS = Settings(default_image="kestrel-trainer:test", gpus_per_node=8)


def _trainer_argv(obj: dict) -> list[str]:
    """The trainer part of an MPIJob's launcher command."""
    c = obj["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    argv = [*c.get("command", []), *c.get("args", [])]
    return argv[argv.index("kestrel"):]


def _example_lines() -> dict[str, list[str]]:
    docs = []
    for path in sorted(Path(EXAMPLES).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    renderer = Renderer(docs, SETTINGS)
    lines = {}
    for obj in renderer.render_all():
        if obj["kind"] == "MPIJob":
            lines[f"examples/{obj['metadata']['name']}"] = _trainer_argv(obj)
    return lines


def _operator_test_lines() -> dict[str, list[str]]:
    bodies = {f"operator-tests/{name}": make() for name, make in BODIES.items()}
    for gpus, procs, mp in ((8, 8, []), (8, 4, [0.5, 0.5]), (16, 16, [])):
        bodies[f"operator-tests/train-{gpus}-{procs}"] = train_body(
            gpus=gpus, numProcesses=procs, experimentSpec=spec_with_parallelism(mp) if mp else TRAIN_SPEC)
    for norm in op_defaults.NORMALIZERS:
        for eq in op_defaults.EQUALIZATION_CRITERIA:
            bodies[f"crd-enums/prune-{norm}-{eq}"] = prune_body(
                normalizer=norm, equalizationCriterion=eq, pruningThreshold=0.35, pruningGranularity=4,
                minNumFilters=1, excludedLayers=["block_1a_conv_1"])
    lines = {}
    for name, body in bodies.items():
        plan = plan_for(body, SETTINGS)
        lines[name] = _trainer_argv(next(o for o in plan.objects if o["kind"] == "MPIJob"))
    return lines


LINES = {**_example_lines(), **_operator_test_lines()}


def _case(name: str, argv: list[str]):
    return pytest.param(argv, id=name)


def test_every_kind_is_covered():
    kinds = {argv[1] for argv in LINES.values()}
    assert kinds == {"train", "prune", "export"}, kinds
    assert any("-el" in argv for argv in LINES.values() if argv[1] == "prune")


@pytest.mark.parametrize("argv", [_case(n, a) for n, a in sorted(LINES.items())])
def test_rendered_command_parses_in_the_trainer(argv):
    assert argv[0] == "kestrel"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"trainer rejects {' '.join(argv)}:\n{err.getvalue()}")
    assert args.command == argv[1]
    if args.command == "prune":
        from kestrel_trainer.prune.rule import PruneOptions
        from kestrel_trainer.prune.run import check_options

        check_options(PruneOptions(args.normalizer, args.criterion, args.granularity, args.threshold,
                                   args.min_num_filters))
        assert isinstance(args, argparse.Namespace) and args.model_path and args.output
