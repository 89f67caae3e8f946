"""`kestrel` command line.

Subcommands live in sibling modules named `*_cmd.py`, each exposing `register(subparsers)` that adds
its parser and sets `func`. They are discovered here so adding a command touches one file, and they
must not import TensorFlow at import time: `kestrel --help` and `kestrel spec check` stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Optional

import kestrel_trainer
from kestrel_trainer import cli as cli_pkg
from kestrel_trainer import storage
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import error_line


def _command_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if info.name.endswith("_cmd"):
            mods.append(importlib.import_module(f"{cli_pkg.__name__}.{info.name}"))
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with usage errors (a value outside `choices`, a missing flag) as the trainer's one line
    (contract.error_line) and exit code 2, like every other bad input, instead of argparse's usage block."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise KestrelError(f"{command}: {message} (see --help)" if command else f"{message} (see --help)",
                           exit_code=2)


def build_parser(
    prog: str = "kestrel",
    description: str = "Train, evaluate, prune and export image classifiers from TAO-style spec files.",
    only: Optional[Sequence[str]] = None,
) -> argparse.ArgumentParser:
    """The full `kestrel` parser, or (with `only`) the subset of commands another front end exposes."""
    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {kestrel_trainer.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _command_modules():
        mod.register(sub)
    if only is not None:
        # argparse has no public removal; drop commands this front end does not offer.
        for name in list(sub.choices):
            if name not in only:
                del sub.choices[name]
        sub._choices_actions = [a for a in sub._choices_actions if a.dest in only]
        sub.metavar = "{" + ",".join(n for n in only if n in sub.choices) + "}"
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    """Parse and dispatch; user errors become one line on stderr and their exit code."""
    try:
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], Optional[int]] = args.func
        with storage.session():  # s3:// outputs: everything written is uploaded before the command returns
            return int(func(args) or 0)
    except KestrelError as err:
        # the operator reads this line; local copies of s3:// paths are named by their URLs
        print(error_line(parser.prog, storage.describe(err.message)), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
