"""`classification_tf1`: a drop-in front end with the original tool's task names and flags.

It is the same parser as `kestrel` restricted to the original's tasks, so the two can never drift:
`classification_tf1 train -e spec.txt -r results -k KEY` runs exactly `kestrel train ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from kestrel_trainer.cli.main import build_parser, run_cli

TAO_TASKS = ("train", "evaluate", "inference", "prune", "export", "gen_trt_engine")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(
        prog="classification_tf1",
        description="Image classification (TAO classification_tf1 compatible), powered by Kestrel.",
        only=TAO_TASKS,
    )
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
