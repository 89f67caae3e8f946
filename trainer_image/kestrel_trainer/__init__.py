"""Kestrel trainer: train, evaluate, prune and export image classifiers from TAO-style spec files.

This package's own import stays light (no TensorFlow) so the operator can use `kestrel_trainer.spec`
without the TensorFlow stack installed; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
