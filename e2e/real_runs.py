"""The user's flow on the real node, as helpers the real-run tests (and later chain tests) share: a key
Secret, hostPath-backed PV/PVCs holding a real Fashion-MNIST subset and the results, and a
ClassificationTrain that runs the trainer image in real pods on the real node."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from tests.conftest import import_fashion_subset
from tests.train.conftest import TINY_SPEC

POD_UID = 1000  # the trainer image's user (operator/kestrel_operator/manifests/pods.py RUN_AS_USER)
KEY_SECRET = "kestrel-key"
DATA_CLAIM = "fashion-data"
RESULTS_CLAIM = "results"
DATA_MOUNT = "/data"
RESULTS_MOUNT = "/results"
PER_CLASS = 16  # real images per class and split: 160 train, 160 val, 160 test
EPOCHS = 2


@dataclass
class Workspace:
    """One namespace prepared the way a user would: key Secret, data and results claims (hostPath PVs on
    folders of this machine, so the test can read what the pods wrote)."""

    namespace: str
    key: str
    data_dir: Path  # host folder behind DATA_CLAIM: train/ val/ test/
    results_dir: Path  # host folder behind RESULTS_CLAIM: one sub-folder per run
    image: str
    runs: dict[str, dict] = field(default_factory=dict)  # resource name -> its final object

    def results_of(self, sub_path: str) -> Path:
        return self.results_dir / sub_path

    def run_folder(self, resource: dict) -> Path:
        """The folder of a resource's current run (status.runPath, `<results mountPath>/runs/<runHash>` in the
        pods) on this machine."""
        results = resource["spec"]["volumes"]["results"]
        run_path = Path(resource["status"]["runPath"])
        return self.results_of(results.get("subPath", "")) / run_path.relative_to(results.get("mountPath",
                                                                                              RESULTS_MOUNT))

    def make_results_folder(self, sub_path: str) -> Path:
        """The run's folder on the results volume, owned by the pods' user: kubelet would create a missing
        subPath as root (mode of the volume root), where the non-root trainer cannot write."""
        folder = self.results_of(sub_path)
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, POD_UID, POD_UID)
        return folder


def create_namespace(cp: cl.ControlPlane, name: str, timeout: float = 60) -> None:
    """A namespace for the bench scripts' runs, returned once its default ServiceAccount exists (pods need one) or
    after `timeout` seconds."""
    cp.kubectl("create", "namespace", name)
    deadline = time.monotonic() + timeout
    while not cp.exists("serviceaccount", "default", name) and time.monotonic() < deadline:
        time.sleep(0.5)


def make_workspace(cp: cl.ControlPlane, namespace: str, root: Path, image: str,
                   per_class: int = PER_CLASS) -> Workspace:
    data = import_fashion_subset(root / "data", per_class=per_class)
    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    os.chown(results, POD_UID, POD_UID)
    for folder in (root, data):
        folder.chmod(0o755)
    key = secrets.token_hex(16)
    # From a file, not a literal: the key must not appear in process listings.
    key_file = root / "key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    cp.kubectl("create", "secret", "generic", KEY_SECRET, "-n", namespace, f"--from-file=key={key_file}")
    key_file.unlink()
    ko.provide_claims(cp, namespace, [DATA_CLAIM, RESULTS_CLAIM], {DATA_CLAIM: data, RESULTS_CLAIM: results})
    return Workspace(namespace=namespace, key=key, data_dir=data, results_dir=results, image=image)


# spec.env of the shared training run: rank 0 logs to MLflow with the image's mlflow-skinny, into a file store
# on the results volume that the test reads (MLflow 3.17 refuses a file store without MLFLOW_ALLOW_FILE_STORE)
MLFLOW_ENV = ({"name": "MLFLOW_TRACKING_URI", "value": f"file:{RESULTS_MOUNT}/mlruns"},
              {"name": "MLFLOW_ALLOW_FILE_STORE", "value": "true"})


def train_resource(ws: Workspace, name: str, *, processes: int = 2, epochs: int = EPOCHS,
                   data_claim: str = DATA_CLAIM, env: tuple[dict, ...] = ()) -> dict:
    """A ClassificationTrain as a user writes it: the tiny spec, `gpus: 0` with numProcesses CPU ranks (one
    worker pod each), the trainer image already on the node, pods pinned to the real node; `env`: its spec.env."""
    return {
        "apiVersion": "kestrel.dev/v1alpha1",
        "kind": "ClassificationTrain",
        "metadata": {"name": name, "namespace": ws.namespace},
        "spec": {
            "experimentSpec": TINY_SPEC.format(data=DATA_MOUNT, epochs=epochs, mixup=0.0),
            "keySecretRef": {"name": KEY_SECRET, "key": "key"},
            "gpus": 0,
            "numProcesses": processes,
            "image": ws.image,
            "imagePullPolicy": "Never",
            "nodeSelector": dict(node_mod.NODE_SELECTOR),
            "tolerations": list(node_mod.NODE_TOLERATIONS),
            "volumes": {
                "data": {"claimName": data_claim, "mountPath": DATA_MOUNT},  # the operator mounts data read-only
                "results": {"claimName": RESULTS_CLAIM, "subPath": name, "mountPath": RESULTS_MOUNT},
            },
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "backoffLimit": 0,
            **({"env": [dict(e) for e in env]} if env else {}),
        },
    }


def run_to_end(cp: cl.ControlPlane, ws: Workspace, resource: dict, wanted: str, timeout: float = 600) -> dict:
    """kubectl apply the resource and wait for its phase; on a different end, the pods' logs are in the error."""
    name = resource["metadata"]["name"]
    ws.make_results_folder(resource["spec"]["volumes"]["results"].get("subPath", ""))
    start = time.monotonic()
    cp.apply(resource)
    try:
        final = ko.wait_phase(cp, resource["kind"], name, ws.namespace, wanted, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- pods ---\n{pod_logs(cp, ws.namespace)}") from None
    final["_elapsed"] = time.monotonic() - start
    ws.runs[name] = final
    return final


def pod_logs(cp: cl.ControlPlane, namespace: str, tail: int = 40) -> str:
    out = []
    for pod in cp.get("pods", namespace=namespace)["items"]:
        pname = pod["metadata"]["name"]
        logs = cp.kubectl("logs", pname, "-n", namespace, f"--tail={tail}", check=False)
        out.append(f"== {pname} ({pod['status'].get('phase')}):\n{logs.stdout or logs.stderr}")
    return "\n".join(out)
