"""Command-line front ends: `kestrel ...` and the drop-in `classification_tf1 ...`."""
