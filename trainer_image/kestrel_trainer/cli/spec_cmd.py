"""`kestrel spec check|show`: validate a spec file and print what it resolves to."""

from __future__ import annotations

import argparse
import sys

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec import TASKS, load_spec
from kestrel_trainer.spec.render import render_spec, summarize

ORDER = 10


def _tasks_ready(path: str) -> list[str]:
    ready = []
    for task in TASKS:
        try:
            load_spec(path, task)
        except SpecError:
            continue
        ready.append(task)
    return ready


def run_check(args: argparse.Namespace) -> int:
    spec = load_spec(args.experiment_spec, args.task)
    for warning in spec.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.task:
        print(f"ok: {args.experiment_spec}: valid for {args.task}: {summarize(spec)}")
    else:
        ready = ", ".join(_tasks_ready(args.experiment_spec)) or "none"
        print(f"ok: {args.experiment_spec}: {summarize(spec)}; complete for: {ready}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    spec = load_spec(args.experiment_spec, args.task)
    for warning in spec.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"# {args.experiment_spec} resolved; '# default' marks values the file does not set")
    sys.stdout.write(render_spec(spec, mark_defaults=not args.no_defaults_marked))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    spec = subparsers.add_parser("spec", help="check or show an experiment spec file")
    sub = spec.add_subparsers(dest="spec_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check", help="validate a spec file (exit 0 and a summary, or exit 2 and the error)")
    check.add_argument("-e", "--experiment_spec", "--experiment_spec_file", required=True, metavar="SPEC",
                       help="the spec file to validate")
    check.add_argument("--task", choices=TASKS, help="also require what this task needs")
    check.set_defaults(func=run_check)

    show = sub.add_parser("show", help="print the resolved spec, defaults marked")
    show.add_argument("-e", "--experiment_spec", "--experiment_spec_file", required=True, metavar="SPEC",
                      help="the spec file to print with every default filled in")
    show.add_argument("--task", choices=TASKS, help="also require what this task needs")
    show.add_argument("--no-defaults-marked", action="store_true", help="omit the '# default' comments")
    show.set_defaults(func=run_show)
