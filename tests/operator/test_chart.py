"""The Helm chart without helm (e2e/test_helm.py runs the real one): versions follow the package, the RBAC it
grants is exactly what the operator calls, and the names it hands the operator are the ones the code reads."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, Optional

import kopf
import yaml

import kestrel_operator
from kestrel_operator.handlers import kopf_handlers
from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.kube import PLURALS
from kestrel_operator.serving.webhook import HANDLER_ID
from tests.operator.conftest import CHART, REPO, export_body, prune_body, train_body
from tests.operator.fake_api import FakeApi

TEMPLATES = CHART / "templates"


def test_chart_version_and_app_version_follow_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["version"] == chart["appVersion"] == version == kestrel_operator.__version__
    # ... and so do the image tags: the chart's default tags are its appVersion, and scripts/build_images.sh tags
    # (and --push pushes) every image with pyproject.toml's version (tests/operator/test_push_args.py: it refuses
    # to push a chart whose version differs).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == values["trainer"]["image"]["tag"] == ""
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers
    assert "(default .Chart.AppVersion .Values.trainer.image.tag)" in helpers
    script = (REPO / "scripts" / "build_images.sh").read_text()
    assert """VERSION=$(sed -n 's/^version = "\\(.*\\)"/\\1/p' pyproject.toml | head -n1)""" in script
    assert 'local ref="localhost/$name:$VERSION"' in script and 'for tag in "$VERSION-$COMMIT" "$VERSION"' in script


class RecordingApi(FakeApi):
    """FakeApi that notes each call as the RBAC (apiGroup, resource, verb) it needs."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[tuple[str, str, str]] = set()

    def _use(self, api_version: str, kind: str, verb: str, sub: str = "") -> None:
        group = api_version.split("/")[0] if "/" in api_version else ""
        self.used.add((group, PLURALS[kind] + (f"/{sub}" if sub else ""), verb))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        self._use(api_version, kind, "get")
        return super().get(api_version, kind, namespace, name)

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        self._use(api_version, kind, "list")
        return super().list(api_version, kind, namespace, label_selector)

    def create(self, obj):
        self._use(obj["apiVersion"], obj["kind"], "create")
        return super().create(obj)

    def delete(self, api_version, kind, namespace, name, uid="", grace_seconds=None):
        self._use(api_version, kind, "delete")
        return super().delete(api_version, kind, namespace, name, uid, grace_seconds)

    def patch(self, api_version, kind, namespace, name, patch):
        self._use(api_version, kind, "patch")
        return super().patch(api_version, kind, namespace, name, patch)

    def patch_status(self, api_version, kind, namespace, name, uid, status_patch):
        self._use(api_version, kind, "patch", "status")
        return super().patch_status(api_version, kind, namespace, name, uid, status_patch)

    def post_event(self, involved, etype, reason, message):
        self._use("v1", "Event", "create")
        super().post_event(involved, etype, reason, message)


def _exercise_the_operator(api: RecordingApi, settings, monkeypatch) -> None:
    """Every path that talks to the API: a run created, mirrored, superseded by a spec change, an upstream
    waited for and woken, a spec ConfigMap read, an invalid resource, the admission check, the leader's resync."""
    from kestrel_operator.handlers import admission

    rec = Reconciler(api, settings)
    monkeypatch.setitem(kopf_handlers._state, "reconciler", rec)
    ctl = kopf_handlers.Controller(rec)
    monkeypatch.setitem(kopf_handlers._state, "controller", ctl)
    api.put(train_body())
    api.put(prune_body())
    api.put(export_body(model={"fromPrune": "pruned"}))
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spec"}, "data": {"spec.txt": "x"}})
    byref = train_body("byref", experimentSpecRef={"name": "spec"})
    del byref["spec"]["experimentSpec"]
    api.put(byref)
    ctl.resync(("default",))  # what a new leader does
    ctl.queue.run_ready()
    api.set_mpijob_conditions("resnet18-train-g1", [{"type": "Succeeded", "status": "True", "reason": "Done"}])
    asyncio.run(kopf_handlers.on_mpijob_event(body=kopf.Body(api.body("MPIJob", "resnet18-train-g1"))))
    ctl.queue.run_ready()
    api.put(train_body(gpus=2))  # a spec change: generation 2 supersedes the run
    body = api.body("ClassificationTrain", "resnet18")
    asyncio.run(kopf_handlers.on_resource_event(type="MODIFIED", body=kopf.Body(body)))
    ctl.queue.run_ready()
    ctl.configmap_changed("default", "spec")
    ctl.queue.run_ready()
    body = api.body("ClassificationTrain", "byref")
    with contextlib.suppress(kopf.AdmissionError):  # its text is "x": refused, after reading the ConfigMap
        admission.validate_spec(body=kopf.Body(body), old=None, operation="CREATE")


def _chart_rules() -> list[dict[str, Any]]:
    text = (TEMPLATES / "_helpers.tpl").read_text()
    block = re.search(r'define "kestrel.watchedRules" -}}\n(.*?)\n{{- end -}}', text, re.S)
    assert block, "watchedRules not found in _helpers.tpl"
    return yaml.safe_load(block.group(1))


def _granted(rules) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def kopf_watches() -> set[tuple[str, str, str]]:
    """list + watch on everything the registered kopf event handlers watch (kopf lists, then watches)."""
    registry = kopf.get_default_registry()
    out = set()
    for handler in registry._watching._handlers:
        sel = handler.selector
        plural = sel.plural or sel.any_name
        out |= {(sel.group or "", plural, "list"), (sel.group or "", plural, "watch")}
    return out


# Granted beyond the calls recorded, each for a stated reason.
EXTRA = {
    # ownerReferences with blockOwnerDeletion under the OwnerReferencesPermissionEnforcement admission plugin
    *{("kestrel.dev", f"{p}/finalizers", "update") for p in ("classificationtrains", "classificationprunes",
                                                              "classificationexports")},
    # The per-resource Role grants get on <plural>/status; RBAC lets the operator grant only what it holds.
    *{("kestrel.dev", f"{p}/status", "get") for p in ("classificationtrains", "classificationprunes",
                                                       "classificationexports")},
    # Paths this exercise does not reach (each has its own test in test_failures.py / test_pod_causes.py):
    # Reconciler._apply reads and patches an existing Role/RoleBinding when serviceAccountName changes;
    ("rbac.authorization.k8s.io", "roles", "get"), ("rbac.authorization.k8s.io", "roles", "patch"),
    ("rbac.authorization.k8s.io", "rolebindings", "get"), ("rbac.authorization.k8s.io", "rolebindings", "patch"),
    # Reconciler._apply reads an object that already exists (a restart mid-pass) to check it is ours;
    ("", "serviceaccounts", "get"), ("kubeflow.org", "mpijobs", "get"),
    # an edit of only suspend/activeDeadlineSeconds/tolerations patches the running MPIJob;
    ("kubeflow.org", "mpijobs", "patch"),
    # the spec ConfigMaps of earlier runs are deleted once their pods are gone;
    ("", "configmaps", "delete"),
    # a pod stuck creating containers is explained from its Events (a missing key Secret, a volume);
    ("", "events", "list"),
    # a dependent's new run in the same generation (its upstream promoted another model) rewrites its spec ConfigMap;
    ("", "configmaps", "patch"),
    # a failed MPIJob's workers that are still up are deleted (MPI Operator v0.8 leaves them, upstream issue 647);
    ("", "pods", "delete"),
    # a queued MPIJob that Kueue holds suspended: its Workload says why (test_scheduling.py).
    ("kueue.x-k8s.io", "workloads", "list"),
}


def test_chart_rbac_is_what_the_operator_calls(settings, monkeypatch):
    api = RecordingApi()
    _exercise_the_operator(api, settings, monkeypatch)
    granted = _granted(_chart_rules())
    needed = api.used | kopf_watches()
    assert needed - granted == set(), "the operator calls or watches what the chart does not grant"
    assert granted - needed - EXTRA == set(), "the chart grants what the operator never calls"


def test_webhook_path_routes_to_the_handler():
    text = (TEMPLATES / "webhook.yaml").read_text()
    assert f"path: /{HANDLER_ID}\n" in text
    registry = kopf.get_default_registry()
    from kestrel_operator.handlers import admission  # noqa: F401  (registers)

    ids = {h.id for h in registry._webhooks.get_all_handlers()}
    assert ids == {HANDLER_ID}


def test_every_env_var_the_chart_sets_is_read_by_the_operator():
    set_by_chart = set(re.findall(r"name: (KESTREL_[A-Z_]+)", (TEMPLATES / "deployment.yaml").read_text()))
    source = (REPO / "operator" / "kestrel_operator" / "settings.py").read_text()
    read = set(re.findall(r'"(KESTREL_[A-Z_]+)"', source))
    assert set_by_chart and set_by_chart <= read
