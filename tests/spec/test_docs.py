"""docs/spec.md documents every field of the schema, with its field number."""

from __future__ import annotations

import re

from kestrel_trainer.spec.proto import experiment_pb2
from tests.conftest import REPO


def _paths(desc, prefix=""):
    for fd in desc.fields:
        path = f"{prefix}.{fd.name}" if prefix else fd.name
        yield path, fd.number
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if fd.message_type is not None and not is_map and fd.name not in ("wandb_config", "clearml_config"):
            yield from _paths(fd.message_type, path)


def test_every_field_has_a_row_with_its_number():
    doc = (REPO / "docs" / "spec.md").read_text()
    for path, number in _paths(experiment_pb2.Experiment.DESCRIPTOR):
        if "." not in path:
            continue
        row = re.search(rf"^\| `{re.escape(path)}` \| (\d+) \|", doc, re.M)
        assert row, f"docs/spec.md has no row for {path}"
        assert int(row.group(1)) == number, f"{path}: documented as field {row.group(1)}, schema says {number}"
