"""What pruning did: parameters, multiply-adds, file sizes and per-layer kept/total, as JSON and as a table.

Parameters and MACs are counted the way `kestrel model info` counts them (models/summary.py), so the
report's "after" equals what `kestrel model info -m PRUNED` prints.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from kestrel_trainer.models.summary import count_macs, param_counts

REPORT_FILENAME = "prune_report.json"


def _ratio(after: int, before: int) -> float:
    return after / before if before else 1.0


def build_report(before: tf.keras.Model, after: tf.keras.Model, layers: list[dict], *, options: dict[str, Any],
                 excluded: list[str], model_path: str, output_path: str, bytes_before: int,
                 bytes_after: Optional[int]) -> dict[str, Any]:
    p0, p1 = param_counts(before)[0], param_counts(after)[0]
    m0, m1 = count_macs(before), count_macs(after)
    return {
        "model": model_path,
        "output": output_path,
        "options": options,
        "excluded_layers": excluded,
        "parameters": {"before": p0, "after": p1, "ratio": _ratio(p1, p0), "removed": 1.0 - _ratio(p1, p0)},
        "macs": {"before": m0, "after": m1, "ratio": _ratio(m1, m0)},
        "file_bytes": {"before": bytes_before, "after": bytes_after},
        "layers": layers,
    }


def pruning_ratio_line(report: dict[str, Any]) -> str:
    """The original's line (and status.json message): parameters after / before, Keras' count_params."""
    return f"Pruning ratio (pruned model / original model): {report['parameters']['ratio']}"


def _mb(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} MB"


def format_report(report: dict[str, Any]) -> str:
    """The table `kestrel prune` prints: one row per Conv2D/Dense/DepthwiseConv2D, then the totals."""
    fmt = "  {:<36} {:<16} {:>13} {:>13}  {}"
    lines = [fmt.format("layer", "type", "kept/total", "score min/med", "note")]
    for row in report["layers"]:
        note = "kept whole" if row["pinned"] else ("pruned" if row["kept"] < row["total"] else "")
        if row["group"]:
            note += f" (equalized with {len(row['group']) - 1} other{'s' if len(row['group']) > 2 else ''})"
        scores = "" if row["score_min"] is None else f"{row['score_min']:.2f}/{row['score_median']:.2f}"
        lines.append(fmt.format(row["layer"], row["type"], f"{row['kept']}/{row['total']}", scores, note.strip()))
    p, m, b = report["parameters"], report["macs"], report["file_bytes"]
    lines += [
        f"parameters: {p['before']:,} -> {p['after']:,} ({p['ratio']:.1%} kept, {p['removed']:.1%} removed)",
        f"compute per image: {m['before']:,} -> {m['after']:,} MACs ({m['ratio']:.1%})",
        f"size on disk: {_mb(b['before'])} -> {_mb(b['after'])}",
    ]
    return "\n".join(lines)
