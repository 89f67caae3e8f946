"""Training progress into the Kubernetes resource that started the run (ClassificationTrain status).

The operator writes which resource started the run into the pods' environment (contract.RunIdentity) and
binds their ServiceAccount to a Role allowing get/patch of that one resource's status. Rank 0 calls
`report()` after every epoch (and inside long ones) and `report_evaluation()` once after `train --evaluate`;
both JSON-merge-patch `status.progress` only (contract.progress_patch, contract.evaluation_patch), so they
never fight the operator over phase or conditions. Each call returns once the API server answered (or the
timeout passed): a report sent just before the process exits has arrived. Reporting is best effort: any
failure (no token, no network, RBAC) is logged once per kind of error and training goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Optional

from kestrel_trainer.spec.contract import RunIdentity, api_client, evaluation_patch, progress_patch, tracker_patch

log = logging.getLogger(__name__)


def _finite(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN/inf: a diverged loss is reported as absent rather than breaking the patch."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ClusterStatusReporter:
    def __init__(self, group: str, version: str, plural: str, name: str, namespace: str, uid: str = "",
                 run: str = "", timeout: float = 10.0) -> None:
        self.group, self.version, self.plural = group, version, plural
        self.name, self.namespace, self.uid, self.run = name, namespace, uid, run
        self.timeout = timeout
        self._api: Any = None
        self._disabled = False
        self._logged: set[str] = set()
        self._checked_uid = not uid

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Optional[ClusterStatusReporter]:
        """A reporter when the operator's variables are all set (running in a cluster), else None."""
        identity = RunIdentity.from_env(os.environ if env is None else env)
        if identity is None:
            return None
        return cls(identity.group, identity.version, identity.plural, identity.name, identity.namespace,
                   uid=identity.uid, run=identity.run)

    @property
    def path(self) -> str:
        return RunIdentity(self.group, self.version, self.plural, self.name, self.namespace).status_path

    @staticmethod
    def _now() -> str:
        return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def body(self, epoch: int, max_epoch: int, loss: Optional[float], accuracy: Optional[float],
             val_loss: Optional[float], val_accuracy: Optional[float], phase_message: Optional[str] = None,
             percent: Optional[int] = None, eta: Optional[str] = None) -> dict[str, Any]:
        """The merge patch of status.progress (the status subresource ignores metadata, so the
        resource's identity is checked once by `_same_resource` instead)."""
        return progress_patch(epoch, max_epoch, _finite(loss), _finite(accuracy), _finite(val_loss),
                              _finite(val_accuracy), phase_message, self.run, self._now(), percent=percent, eta=eta)

    def _same_resource(self, api: Any) -> bool:
        """Is the resource under this name still the one that started the run (same uid)? A run of a
        deleted resource must not write progress into a new resource that reuses the name."""
        import json

        request = api.param_serialize("GET", self.path, auth_settings=["BearerToken"],
                                      header_params={"Accept": "application/json"})
        response = api.call_api(*request, _request_timeout=self.timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            self._disabled = response.status in (401, 403, 404)
            self._log_once(f"get{response.status}", "cluster status: cannot read %s (HTTP %s)", self.path,
                           response.status)
            return False
        uid = (json.loads(data or b"{}").get("metadata") or {}).get("uid")
        if uid != self.uid:
            self._disabled = True
            self._log_once("uid", "cluster status: %s/%s is another resource now (uid %s, expected %s); not "
                           "reporting", self.namespace, self.name, uid, self.uid)
            return False
        self._checked_uid = True
        return True

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, *args)

    def _client(self) -> Any:
        if self._api is None:
            self._api = api_client()
        return self._api

    def report(self, epoch: int, max_epoch: int, loss: Optional[float], accuracy: Optional[float],
               val_loss: Optional[float], val_accuracy: Optional[float], phase_message: Optional[str] = None,
               percent: Optional[int] = None, eta: Optional[str] = None) -> bool:
        """Patch status.progress with the training's progress; True when the API server accepted it. Never raises."""
        try:
            body = self.body(epoch, max_epoch, loss, accuracy, val_loss, val_accuracy, phase_message, percent, eta)
        except Exception as err:  # never let reporting break training
            self._log_once(type(err).__name__, "cluster status report failed: %s", err)
            return False
        return self._send(body)

    def report_evaluation(self, top1: Optional[float], topk: Optional[float], k: int) -> bool:
        """Patch status.progress with the final model's evaluation (train --evaluate), leaving the training's
        fields as they are; True when the API server accepted it. Never raises."""
        try:
            body = evaluation_patch(_finite(top1), _finite(topk), k, self.run, self._now())
        except Exception as err:
            self._log_once(type(err).__name__, "cluster status report failed: %s", err)
            return False
        return self._send(body)

    def report_tracker(self, tracker_run: str) -> bool:
        """Patch status.progress.trackerRun with the experiment tracker's run URL (or id). Never raises."""
        try:
            body = tracker_patch(str(tracker_run), self.run, self._now())
        except Exception as err:
            self._log_once(type(err).__name__, "cluster status report failed: %s", err)
            return False
        return self._send(body)

    def _send(self, body: dict[str, Any]) -> bool:
        """PATCH `body` as a JSON merge patch of the status subresource; True when accepted. Never raises."""
        if self._disabled:
            return False
        try:
            try:
                api = self._client()
            except ImportError:
                raise
            except Exception as err:  # no kubeconfig / no service-account token: not in a cluster
                self._disabled = True
                self._log_once("config", "cluster status reporting disabled: %s", err)
                return False
            request = api.param_serialize(
                "PATCH", self.path, body=body, auth_settings=["BearerToken"],
                header_params={"Accept": "application/json", "Content-Type": "application/merge-patch+json"},
            )
            if not self._checked_uid and not self._same_resource(api):
                return False
            response = api.call_api(*request, _request_timeout=self.timeout)
            response.read()
            if 200 <= response.status < 300:
                return True
            if response.status in (401, 403, 404):
                # Not allowed or not there: it will not get better during this run.
                self._disabled = True
            self._log_once(f"http{response.status}", "cluster status report refused (HTTP %s): %s",
                           response.status, (response.data or b"")[:300])
        except ImportError:
            self._disabled = True
            self._log_once("import", "cluster status reporting needs the kubernetes package; not reporting")
        except Exception as err:  # never let reporting break training
            self._log_once(type(err).__name__, "cluster status report failed: %s", err)
        return False
