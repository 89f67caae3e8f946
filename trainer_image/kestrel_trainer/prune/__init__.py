"""Structured filter pruning (`kestrel prune`), the original's norm-based method for every architecture.

- rule.py: pure NumPy: filter norms, per-layer normalisation, combining a group's scores, the keep rule.
- graph.py: walks a Keras functional model once and finds the equalization groups (channels that must
  keep identical indices) and the channel layout of every tensor (Concatenate offsets, Flatten repeats).
- rebuild.py: the kept indices of every group, a new model with fewer filters (same layer names) and the
  sliced weights copied.
- report.py: parameters, MACs, sizes and per-layer kept/total, as a table and as prune_report.json.
- run.py: the command's I/O: read the model, validate, prune, write atomically.
"""

# The closed sets of -n/--normalizer and -eq/--equalization_criterion (the CLI offers them as choices).
NORMALIZERS = ("max", "L2", "off")
CRITERIA = ("union", "intersection", "arithmetic_mean", "geometric_mean")
