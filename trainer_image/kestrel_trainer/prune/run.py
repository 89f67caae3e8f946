"""`kestrel prune` end to end: check every input, prune, then write the model and prune_report.json.

Nothing is written until everything that a user can get wrong has been checked (options, the model
file and key, excluded layer names, the output path); the model is written atomically and never over
the input model.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.progress import Progress
from kestrel_trainer.prune import rule
from kestrel_trainer.prune.rule import PruneOptions

log = logging.getLogger("kestrel.prune")


class PruneError(KestrelError):
    """Bad pruning input: options, layer names, output path (exit code 2)."""

    exit_code = 2


def check_options(opts: PruneOptions) -> None:
    if opts.normalizer not in rule.NORMALIZERS:
        raise PruneError(f"-n/--normalizer must be one of {', '.join(rule.NORMALIZERS)}, got {opts.normalizer!r}")
    if opts.criterion not in rule.CRITERIA:
        raise PruneError(f"-eq/--equalization_criterion must be one of {', '.join(rule.CRITERIA)}, "
                         f"got {opts.criterion!r}")
    if not 0.0 <= opts.threshold <= 1.0:
        raise PruneError(f"-pth/--pruning_threshold must be in [0, 1], got {opts.threshold}")
    if opts.granularity < 1:
        raise PruneError(f"-pg/--pruning_granularity must be >= 1, got {opts.granularity}")
    if opts.min_num_filters < 1:
        raise PruneError(f"-nf/--min_num_filters must be >= 1, got {opts.min_num_filters}")


def output_target(model_path: str, output: str, key: Optional[str]) -> Path:
    """Where the pruned model lands (OUTPUT with a key, OUTPUT with suffix .hdf5 without); refuse the input."""
    from kestrel_trainer.model_io.files import plain_path

    if os.path.isdir(output):
        raise PruneError(f"-o/--output_file {output} is a directory; give a file name, e.g. {output}/pruned.tlt")
    target = Path(output) if key else plain_path(output)
    if target.is_dir():
        raise PruneError(f"output {target} is a directory")
    if os.path.abspath(target) == os.path.abspath(model_path) or (
            target.exists() and os.path.exists(model_path) and os.path.samefile(target, model_path)):
        raise PruneError(f"output {target} is the input model; write the pruned model to another file")
    return target


def check_excluded(model, excluded: Sequence[str]) -> None:
    names = [layer.name for layer in model.layers]
    known = set(names)
    for name in excluded:
        if name not in known:
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise PruneError(f"-el/--excluded_layers: the model has no layer named {name!r}{hint}")


def prune_model(model, opts: PruneOptions, excluded: Sequence[str] = ()):
    """(pruned model, per-layer rows) for a loaded Keras functional model."""
    import tensorflow as tf

    from kestrel_trainer.prune.graph import build_graph, layer_weights
    from kestrel_trainer.prune.rebuild import group_keep, kept_per_layer, rebuild

    if isinstance(model, tf.keras.Sequential) or not model.inputs:
        raise PruneError(f"model {model.name!r} is not a Keras functional model; only functional models prune")
    weights = layer_weights(model)
    try:
        graph = build_graph(model, opts.normalizer, frozenset(excluded), weights)
    except ValueError as err:  # shared layers and the like: a model we cannot prune safely
        raise PruneError(f"cannot prune model {model.name!r}: {err}") from None
    keep = group_keep(graph, opts)
    return rebuild(model, graph, keep, weights), kept_per_layer(model, graph, keep, opts.criterion)


def prune_file(model_path: str, output: str, key: Optional[str], opts: PruneOptions,
               excluded: Sequence[str] = (), results_dir: Optional[str] = None,
               model_format: str = "kestrel") -> dict[str, Any]:
    """Prune the model file `model_path` into `output` (with a key: our container, or with model_format "tao"
    the original's .tlt); returns the report (also written as JSON)."""
    from kestrel_trainer.model_io.files import save_model, write_atomic
    from kestrel_trainer.predict import load_for_prediction
    from kestrel_trainer.prune.report import REPORT_FILENAME, build_report

    check_options(opts)
    target = output_target(model_path, output, key)
    results = results_dir or str(target.parent)
    if os.path.isfile(results):
        raise PruneError(f"-r/--results_dir {results} is a file")
    model = load_for_prediction(model_path, key)
    check_excluded(model, excluded)
    # after every input check, so that bad input stays one line on stderr
    bar = Progress(total=2, desc="prune (prune, save)", unit="stage")
    pruned, rows = prune_model(model, opts, excluded)
    bar.update(1)
    lowest = [r["score_min"] for r in rows if r["score_min"] is not None]
    if all(r["kept"] == r["total"] for r in rows) and lowest:
        log.warning("nothing was pruned: every filter scores above the threshold %g (lowest normalised score %.3f, "
                    "after the minimum and granularity); see docs/prune.md, 'Choosing the threshold'",
                    opts.threshold, min(lowest))
    written = save_model(pruned, target, key, include_optimizer=False, format=model_format)
    bar.update(1)
    bar.close()
    report = build_report(model, pruned, rows, options=asdict(opts), excluded=list(excluded),
                          model_path=model_path, output_path=str(written),
                          bytes_before=os.path.getsize(model_path), bytes_after=os.path.getsize(written))
    write_atomic(os.path.join(results, REPORT_FILENAME), (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    log.info("pruned model written to %s", written)
    return report
