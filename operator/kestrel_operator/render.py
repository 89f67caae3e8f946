"""`render`: the exact objects the operator would create for resources in YAML files, no cluster.

References are resolved from the same input: an experimentSpecRef needs its ConfigMap in the input,
a `fromTrain`/`fromPrune` needs that resource (rendered as if it had succeeded, which is when the
operator would start this run). Uses the same `plan_run` as the handlers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

import yaml

from kestrel_operator.manifests.build import RunPlan, model_ref_of, plan_run
from kestrel_operator.manifests.outputs import OutputLocation
from kestrel_operator.resources import KINDS, InvalidSpec, parse_resource
from kestrel_operator.resources.types import Resource
from kestrel_operator.settings import Settings


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    return yaml.dump_all([dict(o) for o in objects], Dumper=_NoAliases, sort_keys=False, default_flow_style=False,
                         width=120)


class Renderer:
    def __init__(self, documents: list[Mapping[str, Any]], settings: Settings, namespace: str = "default") -> None:
        self.settings = settings
        self.namespace = namespace
        self.docs = [self._defaulted(d) for d in documents if isinstance(d, Mapping)]

    def _defaulted(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        doc = dict(doc)
        meta = dict(doc.get("metadata") or {})
        meta.setdefault("namespace", self.namespace)
        meta.setdefault("generation", 1)
        doc["metadata"] = meta
        return doc

    def _find(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        return next((d for d in self.docs if d.get("kind") == kind and d["metadata"].get("name") == name), None)

    def spec_text(self, res: Resource) -> Optional[str]:
        if res.run.experiment_spec is not None:
            return res.run.experiment_spec
        ref = res.run.experiment_spec_ref
        if ref is None:
            return None
        cm = self._find("ConfigMap", ref.name)
        if cm is None:
            raise InvalidSpec(f"ConfigMap {ref.name} is not in the input; add it with another -f so render can "
                              "read the spec text", "spec.experimentSpecRef")
        text = (cm.get("data") or {}).get(ref.key)
        if text is None:
            raise InvalidSpec(f"ConfigMap {ref.name} has no key {ref.key!r}", "spec.experimentSpecRef")
        return text

    def output_of(self, kind: str, name: str, depth: int = 0) -> OutputLocation:
        """The model `kind name` would promote: its run's output (its run hash follows its own upstream)."""
        doc = self._find(kind, name)
        if doc is None:
            raise InvalidSpec(f"{kind} {name} is not in the input; add it with another -f so render can resolve "
                              "the model it produces", "spec")
        if depth > 8:
            raise InvalidSpec("model references form a cycle", "spec")
        return self.plan(doc, depth + 1).output

    def plan(self, doc: Mapping[str, Any], depth: int = 0) -> RunPlan:
        res = parse_resource(doc, self.settings)
        ref = model_ref_of(res)
        upstream = None
        if ref is not None and ref.source_kind is not None:
            upstream = self.output_of(ref.source_kind, ref.source_name or "", depth)
        return plan_run(res, self.spec_text(res), upstream)

    def render_all(self) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        for doc in self.docs:
            if doc.get("kind") in KINDS:
                objects.extend(self.plan(doc).objects)
        return objects
