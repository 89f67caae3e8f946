"""Datasets on disk (image folders, classmaps, bad-image checks, importers) and the tf.data input pipeline.

`folders`, `sharding`, `check` (apart from its TensorFlow decode), `decoded`, `stats` and `datasets` do not
import TensorFlow at module import time, so CLI commands stay fast; `transforms` and `pipeline` do.
`sharding` never does (a test checks it).
"""
