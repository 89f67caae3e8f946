"""The CRDs' CEL rules and the operator's Python checks are one table (resources/rules.py, whose GPU/rank rows
are kestrel_trainer.spec.parallelism.RULES): every row is a CEL rule in the CRDs and a check in parse.py with
the same message, and on a table of resources the CEL (evaluated by tests/operator/cel_subset.py, an
evaluator written from the CEL spec, on the object defaulted from the CRD's schema as the API server does)
and the Python agree row by row. e2e/test_operator_train.py applies such resources to a real API server.
"""

from __future__ import annotations

from typing import Any

import pytest

from kestrel_operator.resources import InvalidSpec, parse_resource
from kestrel_operator.resources import rules as cel
from kestrel_operator.resources.crd import crd
from kestrel_operator.resources.types import KINDS
from kestrel_trainer.spec import parallelism as par
from tests.operator.cel_subset import CelError, apply_defaults, evaluate
from tests.operator.conftest import export_body, prune_body, train_body

TRAIN, PRUNE, EXPORT = "ClassificationTrain", "ClassificationPrune", "ClassificationExport"
BODY = {TRAIN: train_body, PRUNE: prune_body, EXPORT: export_body}


def _spec_schema(kind: str) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _where(kind: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per rule location, the (field, schema) pairs of the CRD that carry its rules."""
    spec = _spec_schema(kind)
    props = spec["properties"]
    refs = [(f, props[f]) for f in ("pretrainedModel", "model") if f in props]
    return {cel.SPEC: [("spec", spec)], cel.VOLUMES: [("volumes", props["volumes"])], cel.MODEL_REF: refs,
            cel.REQUIREMENTS: [(f, props[f]) for f in ("resources", "launcherResources")]}


def _validations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(v["rule"], v["message"]) for v in schema.get("x-kubernetes-validations", [])]


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_of_the_crds_is_a_row_of_the_table_and_every_row_is_in_the_crds(kind):
    for at, places in _where(kind).items():
        for _, schema in places:
            assert _validations(schema) == [(r.cel, r.message) for r in cel.rules_at(at, kind)], (kind, at)
    # nowhere else: count every x-kubernetes-validations in the whole schema
    def count(node: Any) -> int:
        if isinstance(node, dict):
            return len(node.get("x-kubernetes-validations", [])) + sum(count(v) for v in node.values())
        if isinstance(node, list):
            return sum(count(v) for v in node)
        return 0
    expected = sum(len(cel.rules_at(at, kind)) * len(places) for at, places in _where(kind).items())
    assert count(crd(kind)) == expected


def test_the_gpu_rank_rows_are_the_trainers_table_with_its_bounds_as_schema_minimums():
    rows = {r.key: r for r in cel.RULES if r.parallelism}
    assert set(rows) == {r.key for r in par.RULES if r.cel}
    for rule in par.RULES:
        if rule.cel:
            assert (rows[rule.key].cel, rows[rule.key].message) == (rule.cel, rule.text(par.FIELDS))
    field = {"gpus": "gpus", "processes": "numProcesses", "gpus_per_node": "gpusPerNode"}
    for kind in KINDS:
        props = _spec_schema(kind)["properties"]
        for name, rule in par.BOUNDS.items():
            assert props[field[name]]["minimum"] == rule.minimum


S3 = {"s3": {"endpoint": "http://10.0.0.1:7070", "secretRef": {"name": "s3-credentials"}},
      "resultsPath": "s3://runs/fashion"}
# (kind, spec changes) -> each applicable row's verdict is compared; `None` deletes a key of the base body.
CASES: list[tuple[str, dict[str, Any]]] = [
    (TRAIN, {}),
    (TRAIN, {"gpus": 6, "numProcesses": 4}),
    (TRAIN, {"gpus": 8, "numProcesses": 4}),
    (TRAIN, {"numProcesses": 2}),  # gpus defaults to 1 (the API server fills it in before CEL)
    (TRAIN, {"gpus": 0, "numProcesses": 3}),
    (TRAIN, {"gpus": 16, "numProcesses": 1, "gpusPerNode": 8}),
    (TRAIN, {"gpus": 16, "numProcesses": 2, "gpusPerNode": 8}),
    (TRAIN, {"gpus": 20, "numProcesses": 3, "gpusPerNode": 4}),
    (TRAIN, {"gpus": 4, "gpusPerNode": 2}),  # numProcesses defaults to gpus: one GPU per rank
    (TRAIN, {"experimentSpecRef": {"name": "cm"}}),
    (TRAIN, {"experimentSpec": None, "experimentSpecRef": {"name": "cm"}}),
    (TRAIN, {"experimentSpec": None}),
    (TRAIN, {"volumes": {"data": {"claimName": "d", "mountPath": "/results"}, "results": {"claimName": "r"}}}),
    (TRAIN, {"volumes": {"data": {"claimName": "d"}, "results": {"claimName": "r", "mountPath": "/data"}}}),
    (TRAIN, {"volumes": {"data": {"claimName": "d"}, "results": {"claimName": "r"}}}),
    (TRAIN, {"volumes": None, "storage": S3}),  # no PVC at all
    (TRAIN, {"volumes": None}),  # neither: no results location, no data
    (TRAIN, {"storage": S3}),  # both a results volume and storage.resultsPath
    # data from s3, results on a PVC
    (TRAIN, {"volumes": {"results": {"claimName": "r"}}, "storage": {"s3": S3["s3"]}}),
    (TRAIN, {"volumes": {"results": {"claimName": "r"}}}),  # no data volume and no storage
    (TRAIN, {"pretrainedModel": {"path": "/data/m.tlt"}}),
    (TRAIN, {"pretrainedModel": {"path": "/data/m.tlt", "fromTrain": "t"}}),
    (TRAIN, {"pretrainedModel": {}}),
    (TRAIN, {"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
    (TRAIN, {"resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}}),
    (TRAIN, {"launcherResources": {"requests": {"nvidia.com/gpu": "1"}}}),
    (PRUNE, {}),
    (PRUNE, {"numProcesses": 2}),
    (PRUNE, {"numProcesses": 1, "gpus": 1}),
    (PRUNE, {"gpus": 3, "numProcesses": 2}),
    (PRUNE, {"experimentSpec": "x", "experimentSpecRef": {"name": "cm"}}),
    (PRUNE, {"model": {"fromTrain": "a", "fromPrune": "b"}}),
    (PRUNE, {"model": {}}),
    (PRUNE, {"volumes": None, "storage": S3, "model": {"path": "s3://runs/m.tlt"}}),
    (PRUNE, {"volumes": None}),
    (EXPORT, {}),
    (EXPORT, {"dataType": "int8"}),
    (EXPORT, {"dataType": "int8", "calibration": {}}),
    (EXPORT, {"dataType": "int8", "calibration": {"cacheFile": "/results/cal.bin"}}),
    (EXPORT, {"dataType": "fp16", "calibration": {"batches": 2}}),
    (EXPORT, {"volumes": {"data": {"claimName": "d", "mountPath": "/r"}, "results": {"claimName": "r",
                                                                                     "mountPath": "/r"}}}),
]


def _body(kind: str, changes: dict[str, Any]) -> dict[str, Any]:
    body = BODY[kind](**{k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        body["spec"].pop(key)
    return body


def _python_messages(body: dict[str, Any], settings) -> list[str]:
    try:
        parse_resource(body, settings)
    except InvalidSpec as err:
        return [e.detail for e in err.errors]
    return []


def _verdicts(kind: str, body: dict[str, Any]) -> list[tuple[cel.CelRule, str, bool, bool]]:
    """(row, where, CEL's verdict, Python's verdict) for every row that applies to an object in the body."""
    out = []
    spec = body["spec"]
    for at, places in _where(kind).items():
        for field, schema in places:
            raw = spec if field == "spec" else spec.get(field)
            if raw is None:
                continue
            defaulted = apply_defaults(schema, raw)
            for row in cel.rules_at(at, kind):
                out.append((row, field, evaluate(row.cel, defaulted), row.holds(raw, kind)))
    return out


@pytest.mark.parametrize("kind,changes", CASES, ids=[f"{k[14:]}-{c}" for k, c in CASES])
def test_cel_and_python_agree_row_by_row(kind, changes, settings):
    body = _body(kind, changes)
    python_messages = _python_messages(body, settings)
    for row, field, by_cel, by_python in _verdicts(kind, body):
        assert by_cel == by_python, f"{row.key} on {field}: CEL says {by_cel}, the Python condition {by_python}"
        # ... and parse.py reports exactly the broken rows, with the row's message
        reported = any(m == row.message or m.startswith(row.message + ": ") for m in python_messages)
        assert reported == (not by_cel), f"{row.key}: CEL {by_cel}, parse.py said {python_messages}"


def test_the_case_table_breaks_and_keeps_every_row():
    """No row is checked only where it holds (or only where it fails)."""
    seen: dict[str, set[bool]] = {r.key: set() for r in cel.RULES}
    for kind, changes in CASES:
        for row, _, by_cel, _ in _verdicts(kind, _body(kind, changes)):
            seen[row.key].add(by_cel)
    assert {k: v for k, v in seen.items() if v != {True, False}} == {}


def test_the_cel_evaluator_follows_the_cel_spec():
    """Facts from the CEL language definition, so the comparison above rests on CEL's meaning, not ours."""
    assert evaluate("-7 / 2 == -3 && -7 % 2 == -1 && 7 % -2 == 1", {})  # truncation toward zero
    assert evaluate("true || self.missing == 1", {}) and not evaluate("false && self.missing == 1", {})
    assert evaluate("self.missing == 1 || true", {})  # || is commutative over errors
    with pytest.raises(CelError):
        evaluate("self.missing == 1", {})
    with pytest.raises(CelError):
        evaluate("self.a / self.b == 0", {"a": 1, "b": 0})
    assert evaluate("has(self.a) && !has(self.b) && 'k' in self.a", {"a": {"k": 1}})
    assert evaluate("(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) == 1", {"a": 1})
    with pytest.raises(SyntaxError):
        evaluate("self.a.exists(x, x > 1)", {"a": [2]})
