"""Render a resolved spec back to text format, marking values that came from defaults.

The output of `kestrel spec show` is itself a valid spec file: what you see is what runs.
"""

from __future__ import annotations

import json
from typing import Any

from kestrel_trainer.spec.types import ExperimentSpec

_ENUM_FIELDS = {"model_config.resize_interpolation_method"}


def _literal(path: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if path in _ENUM_FIELDS else json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_spec(spec: ExperimentSpec, mark_defaults: bool = True) -> str:
    """Text-format rendering in file order; `# default` marks fields the user did not write."""
    lines: list[str] = []
    open_blocks: list[str] = []

    for path, value in spec.fields.items():
        if value is None or (isinstance(value, (tuple, dict)) and not value and path not in spec.defaults_used):
            continue
        *parents, name = path.split(".")
        common = 0
        while common < min(len(parents), len(open_blocks)) and parents[common] == open_blocks[common]:
            common += 1
        while len(open_blocks) > common:
            open_blocks.pop()
            lines.append("  " * len(open_blocks) + "}")
        for block in parents[common:]:
            lines.append("  " * len(open_blocks) + block + " {")
            open_blocks.append(block)
        indent = "  " * len(open_blocks)
        mark = "  # default" if mark_defaults and path in spec.defaults_used else ""
        if isinstance(value, dict):
            for key, item in sorted(value.items()):
                lines.append(f"{indent}{name} {{ key: {json.dumps(key)} value: {_literal(path, item)} }}{mark}")
        elif isinstance(value, tuple):
            for item in value:
                lines.append(f"{indent}{name}: {_literal(path, item)}{mark}")
        else:
            lines.append(f"{indent}{name}: {_literal(path, value)}{mark}")
    while open_blocks:
        open_blocks.pop()
        lines.append("  " * len(open_blocks) + "}")
    return "\n".join(lines) + "\n"


def summarize(spec: ExperimentSpec) -> str:
    """One line saying what this spec would build and run (the `spec check` answer)."""
    m, tr = spec.model, spec.train
    parts = [f"{m.name} {m.input_channels}x{m.input_height}x{m.input_width}"]
    if tr.optimizer is not None and tr.lr is not None:
        parts.append(
            f"{tr.optimizer.name} + {tr.lr.name} lr {tr.lr.learning_rate:g}, {tr.n_epochs} epochs, "
            f"batch {tr.batch_size_per_gpu}/GPU"
        )
    parts.append(f"preprocess {tr.preprocess_mode}")
    return ", ".join(parts)
