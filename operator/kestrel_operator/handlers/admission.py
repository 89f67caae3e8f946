"""The validating admission webhook: kopf validate handlers, thin. The check is manifests/check.py.

Served by kopf's WebhookServer (TLS from serving/webhook.py) at path `/kestrel-spec` for CREATE and UPDATE of
the three kinds. An UPDATE that leaves `spec` unchanged (labels, annotations, finalizers, deletion) is always
allowed, so a resource admitted before the webhook existed can still be relabelled or deleted.
"""

from __future__ import annotations

from typing import Any, Optional

import kopf

from kestrel_operator import GROUP, VERSION
from kestrel_operator.handlers.kopf_handlers import reconciler
from kestrel_operator.manifests.check import check_resource
from kestrel_operator.resources import InvalidSpec
from kestrel_operator.resources.types import KINDS
from kestrel_operator.serving.webhook import HANDLER_ID


def _spec_text(body: dict[str, Any]) -> Optional[str]:
    """Inline text, or the referenced ConfigMap's when it exists already (GitOps may apply it later: then
    the reconciler reports SpecNotFound and checks the text once it appears)."""
    spec = body.get("spec") or {}
    if "experimentSpec" in spec:
        return spec.get("experimentSpec")
    ref = spec.get("experimentSpecRef")
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    meta = body.get("metadata") or {}
    cm = reconciler().api.get("v1", "ConfigMap", meta.get("namespace") or "default", ref["name"])
    return ((cm or {}).get("data") or {}).get(ref.get("key") or "spec.txt")


def validate_spec(body: kopf.Body, old: Optional[kopf.Body], operation: Optional[str], **_: Any) -> None:
    if operation == "UPDATE" and old is not None and dict(old.get("spec") or {}) == dict(body.get("spec") or {}):
        return
    obj = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "spec": dict(body.get("spec") or {}),
           "metadata": dict(body.get("metadata") or {})}
    meta = obj["metadata"]
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = f"{meta['generateName']}x"  # the API server picks the suffix after admission
    try:
        check_resource(obj, reconciler().settings, _spec_text(obj))
    except InvalidSpec as err:
        raise kopf.AdmissionError(err.message, code=422) from None


for _plural in KINDS.values():
    kopf.on.validate(GROUP, VERSION, _plural, id=HANDLER_ID, operations=["CREATE", "UPDATE"])(validate_spec)


def serve_with(server: Any) -> None:
    """Make kopf serve these handlers with `server` (a kopf.WebhookServer) from its start-up on."""

    def use_server(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = server

    kopf.on.startup(id="admission-server")(use_server)
