"""`kestrel doctor`: check that this machine (or pod) can train: TensorFlow, GPUs, Horovod, a few steps, a 2-rank
allreduce; PASS/FAIL lines, non-zero exit on a FAIL (kestrel_trainer.train.doctor, docs/gpu.md)."""

from __future__ import annotations

import argparse

from kestrel_trainer.cli.common import setup_logging

ORDER = 90


def run(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)
    from kestrel_trainer.train import doctor

    if args.rank_check:
        return doctor.rank_check(args.gpus or 0)
    return doctor.run_doctor(args.gpus)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check TensorFlow, GPUs and Horovod here: PASS/FAIL lines")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs a run here would ask for: fewer visible is a FAIL (default: what is there, else the CPU)")
    p.add_argument("--rank-check", dest="rank_check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)
