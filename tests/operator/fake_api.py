"""An in-memory stand-in for kube.KubeApi: the API server's object store, for reconciler tests.

It keeps objects by (kind, namespace, name), assigns uids, resourceVersions and generations, answers
create with "exists" on a name clash, and records status patches and events, which is what the
reconciler's behaviour is judged on. The real HTTP path is covered by test_kube.py and e2e/.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any, Optional

from kestrel_operator.kube import KubeError

_counter = itertools.count(1)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _field(obj: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, str]] = []  # (object name, type, reason, message)
        self.status_patches: list[dict[str, Any]] = []
        self.creates: list[str] = []
        self.deletes: list[str] = []
        self.graceful_deletes: list[tuple[str, int]] = []  # (Kind/name, gracePeriodSeconds) when one is given
        self.patches: list[tuple[str, dict[str, Any]]] = []  # ("Kind/name", merge patch)
        self.calls: list[tuple[str, str]] = []  # (verb, kind) of every call, for counting
        self._failures: list[list[Any]] = []  # [verb, kind, status, times left]

    def fail(self, verb: str, kind: str, status: int, times: int = 1) -> None:
        """The next `times` calls `verb` (get, list, create, patch, delete, patch_status) on `kind` fail
        with HTTP `status`, as kube.KubeApi reports it (a KubeError naming the kind)."""
        self._failures.append([verb, kind, status, times])

    def _call(self, verb: str, kind: str, what: str) -> None:
        self.calls.append((verb, kind))
        for failure in self._failures:
            if failure[0] == verb and failure[1] == kind and failure[3] > 0:
                failure[3] -= 1
                raise KubeError(f"{verb} {kind} {what}: HTTP {failure[2]}: injected by the test", failure[2], kind)

    # -- test setup helpers --------------------------------------------------------------------
    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store `obj` as the API server would (uid, generation, resourceVersion); return the stored copy."""
        obj = copy.deepcopy(dict(obj))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (obj["kind"], meta["namespace"], meta["name"])
        old = self.objects.get(key)
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            gen = old["metadata"].get("generation", 1)
            meta["generation"] = gen + 1 if old.get("spec") != obj.get("spec") else gen
            obj.setdefault("status", old.get("status"))
        else:
            meta.setdefault("uid", f"uid-{next(_counter)}")
            meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(_counter))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def body(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def set_mpijob_conditions(self, name: str, conditions: list[dict[str, Any]], namespace: str = "default",
                              **status: Any) -> None:
        job = self.objects[("MPIJob", namespace, name)]
        job["status"] = {"conditions": conditions, **status}
        job["metadata"]["resourceVersion"] = str(next(_counter))  # a status update is a new version

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in self.objects.items() if k == kind]

    # -- the Api protocol ----------------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        self._call("get", kind, f"{namespace}/{name}")
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "",
             field_selector: str = "") -> list[dict[str, Any]]:
        self._call("list", kind, namespace)
        wanted = dict(p.split("=", 1) for p in label_selector.split(",") if p)
        fields = dict(p.split("=", 1) for p in field_selector.split(",") if p)
        out = []
        for (k, ns, _), obj in self.objects.items():
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if k != kind or (namespace and ns != namespace) or any(labels.get(a) != b for a, b in wanted.items()):
                continue
            if all(_field(obj, path) == value for path, value in fields.items()):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, obj: Mapping[str, Any]) -> str | bool:
        self._call("create", obj["kind"], obj["metadata"]["name"])
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            return False
        self.creates.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return self.put(obj)["metadata"]["resourceVersion"]

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str = "",
               grace_seconds: Optional[int] = None) -> bool:
        self._call("delete", kind, name)
        if grace_seconds is not None:
            self.graceful_deletes.append((f"{kind}/{name}", grace_seconds))
        obj = self.objects.get((kind, namespace, name))
        if obj is None or (uid and obj["metadata"]["uid"] != uid):
            return False
        del self.objects[(kind, namespace, name)]
        self.deletes.append(f"{kind}/{name}")
        return True

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, uid: str,
                     status_patch: Mapping[str, Any]) -> str | bool:
        self._call("patch_status", kind, name)
        obj = self.objects.get((kind, namespace, name))
        if obj is None or (uid and obj["metadata"]["uid"] != uid):
            return False
        obj["status"] = merge_patch(obj.get("status") or {}, status_patch)
        obj["metadata"]["resourceVersion"] = str(next(_counter))
        self.status_patches.append(copy.deepcopy(dict(status_patch)))
        return obj["metadata"]["resourceVersion"]

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Merge patch; a metadata.resourceVersion in it must match (else False, as kube.KubeApi on 409)."""
        self._call("patch", kind, name)
        obj = self.objects.get((kind, namespace, name))
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if obj is None or (wanted is not None and wanted != obj["metadata"]["resourceVersion"]):
            return False
        merged = merge_patch(obj, patch)
        merged["metadata"]["resourceVersion"] = str(next(_counter))
        self.objects[(kind, namespace, name)] = merged
        self.patches.append((f"{kind}/{name}", copy.deepcopy(dict(patch))))
        return True

    def post_event(self, involved: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        self.events.append((involved["metadata"]["name"], etype, reason, message))
