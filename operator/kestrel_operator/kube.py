"""The one module that talks to the Kubernetes API (through the official client).

Everything above it works on plain dicts, so the reconciler is tested against an in-memory double of
this class and `render` needs no cluster. Requests are raw REST calls on a small kind -> path table:
no discovery round-trips, the same code for core objects, RBAC, MPIJobs and our own resources.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from kestrel_trainer.spec.contract import api_client

log = logging.getLogger(__name__)

# kind -> plural, for every kind the operator reads or writes.
PLURALS: Mapping[str, str] = {
    "Pod": "pods",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Event": "events",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "MPIJob": "mpijobs",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Workload": "workloads",  # Kueue's, read while it holds a queued MPIJob
    "ClassificationTrain": "classificationtrains",
    "ClassificationPrune": "classificationprunes",
    "ClassificationExport": "classificationexports",
    # The operator's own plumbing (leader Lease, webhook certificate and configuration):
    "Secret": "secrets",
    "Lease": "leases",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}


class KubeError(RuntimeError):
    """An API call failed for a reason other than not-found/already-exists; `status` is the HTTP code
    (0: no answer, e.g. the connection was refused) and `kind` the kind the call was about."""

    def __init__(self, message: str, status: int = 0, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def load_client_config(pool_size: int = 16) -> Any:
    """In a pod: the service account. Elsewhere: KUBECONFIG (or ~/.kube/config), as the trainer's reporter
    does (contract.api_client). `pool_size`: kept-alive connections (at least the reconcile workers: a busy
    pool opens and drops extra TLS connections)."""
    return api_client(pool_size)


def current_namespace() -> str:
    """The kubeconfig's current context's namespace, as kubectl picks it; else `default` (also in a pod, or with an
    unreadable kubeconfig: the first API call says what is wrong)."""
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        return str((current or {}).get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    """The collection in `namespace`, or across all namespaces when it is empty."""
    plural = PLURALS[kind]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def _version(payload: Any) -> str:
    """resourceVersion of a returned object ("?" when the server sent none: still a true value)."""
    meta = payload.get("metadata") if isinstance(payload, dict) else None
    return str((meta or {}).get("resourceVersion") or "?")


class KubeApi:
    """Get, list, create, delete, patch status, post events: all the reconciler needs."""

    def __init__(self, api_client: Any = None, timeout: float = 30.0) -> None:
        self._client = api_client
        self.timeout = timeout

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = load_client_config()
        return self._client

    def _request(self, method: str, path: str, body: Any = None, query: Optional[list] = None,
                 content_type: str = "application/json") -> tuple[int, Any]:
        request = self.client.param_serialize(
            method, path, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*request, _request_timeout=self.timeout)
        except Exception as err:  # connection refused/reset, timeout: no HTTP answer at all
            from kubernetes.client.exceptions import ApiException

            if isinstance(err, ApiException):
                raise
            raise KubeError(f"{method} {path}: no answer from the API server: {err}", 0) from None
        data = response.read()
        text = data.decode("utf-8") if isinstance(data, bytes) else (data or "")
        payload = json.loads(text) if text else None
        return response.status, payload

    def _ok(self, status: int, payload: Any, what: str, kind: str = "") -> None:
        if 200 <= status < 300:
            return
        message = payload.get("message") if isinstance(payload, dict) else payload
        raise KubeError(f"{what}: HTTP {status}: {message}", status, kind)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        status, payload = self._request("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        if status == 404:
            return None
        self._ok(status, payload, f"get {kind} {namespace}/{name}", kind)
        return payload

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "",
             field_selector: str = "") -> list[dict[str, Any]]:
        """Objects in `namespace` (all namespaces when empty); [] when the kind is not served (404)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        status, payload = self._request("GET", collection_path(api_version, kind, namespace), query=query)
        if status == 404:  # e.g. the MPIJob CRD is not installed: nothing to list
            return []
        self._ok(status, payload, f"list {kind} in {namespace or 'all namespaces'}", kind)
        items = list(payload.get("items") or [])
        item_kind = str(payload.get("kind") or "").removesuffix("List")
        for item in items:  # list items carry no kind/apiVersion; the reconciler reads both
            item.setdefault("kind", item_kind or kind)
            item.setdefault("apiVersion", payload.get("apiVersion") or api_version)
        return items

    def create(self, obj: Mapping[str, Any]) -> str | bool:
        """The created object's resourceVersion (a non-empty string) when created, False when an object of
        that name already exists."""
        meta = obj["metadata"]
        status, payload = self._request("POST", collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
                                        body=dict(obj))
        if status == 409:
            return False
        self._ok(status, payload, f"create {obj['kind']} {meta['namespace']}/{meta['name']}", obj["kind"])
        return _version(payload)

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str = "",
               grace_seconds: Optional[int] = None) -> bool:
        """Background deletion (the garbage collector removes what the object owns). False if gone.
        `grace_seconds`: the pod's grace period for this deletion instead of its own."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        status, payload = self._request("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}", body=body)
        if status in (404, 409):
            return False
        self._ok(status, payload, f"delete {kind} {namespace}/{name}", kind)
        return True

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, uid: str,
                     status_patch: Mapping[str, Any]) -> str | bool:
        """JSON merge patch of the status subresource; the new resourceVersion, or False if it is gone.
        (The API server ignores metadata on /status, so `uid` is no precondition there; handlers reconcile
        a fresh read whose uid they checked.)"""
        body = {"status": dict(status_patch)}
        status, payload = self._request("PATCH", f"{collection_path(api_version, kind, namespace)}/{name}/status",
                                        body=body, content_type="application/merge-patch+json")
        if status in (404, 409):
            return False
        self._ok(status, payload, f"patch status of {kind} {namespace}/{name}", kind)
        return _version(payload)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """JSON merge patch of an object. A `metadata.resourceVersion` in the patch makes it conditional:
        False when the object changed since (409) or is gone (404)."""
        status, payload = self._request("PATCH", f"{collection_path(api_version, kind, namespace)}/{name}",
                                        body=dict(patch), content_type="application/merge-patch+json")
        if status in (404, 409):
            return False
        self._ok(status, payload, f"patch {kind} {namespace}/{name}", kind)
        return True

    def pod_log(self, namespace: str, name: str, container: str = "", follow: bool = False,
                tail_lines: Optional[int] = None) -> Iterator[str]:
        """A pod's log, line by line (newline removed). `follow`: stream until the container ends (no read
        timeout: a quiet container is not an error), as `kubectl logs -f`."""
        query: list[tuple[str, str]] = [("container", container)] if container else []
        if follow:
            query.append(("follow", "true"))
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        path = f"{collection_path('v1', 'Pod', namespace)}/{name}/log"
        request = self.client.param_serialize("GET", path, query_params=query, header_params={"Accept": "*/*"},
                                              auth_settings=["BearerToken"])
        timeout = (self.timeout, None) if follow else self.timeout
        try:
            response = self.client.call_api(*request, _request_timeout=timeout)
        except Exception as err:  # connection refused/reset, timeout: no HTTP answer at all
            raise KubeError(f"GET {path}: no answer from the API server: {err}", 0) from None
        if not 200 <= response.status < 300:
            data = response.read()
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
            try:
                payload: Any = json.loads(text)
            except ValueError:
                payload = text
            self._ok(response.status, payload, f"logs of pod {namespace}/{name}", "Pod")
        raw = response.response  # urllib3's response, not read yet: lines as they arrive
        try:
            for line in raw:
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        finally:
            raw.release_conn()

    def post_event(self, involved: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        """A core/v1 Event on `involved` (the resource); failures are logged, never raised."""
        meta = involved.get("metadata") or {}
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'kestrel')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kestrel-operator"},
            "reportingComponent": "kestrel.dev/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "kestrel-operator"),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            status, payload = self._request("POST", collection_path("v1", "Event", str(meta.get("namespace"))),
                                            body=event)
            self._ok(status, payload, "post event")
        except Exception as err:  # an Event is best effort: never fail a reconcile for it
            log.warning("could not post event %s on %s: %s", reason, meta.get("name"), err)
