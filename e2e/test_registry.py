"""Images and the chart from an OCI registry with credentials, and a fresh results volume the non-root trainer can
write (issue 29 item 5), on the real node.

What is real: the registry (CNCF Distribution v3.1.2, gomod/registry, registry.py: TLS from the e2e CA, htpasswd with
bcrypt, a password made for this session), podman's push and helm's package/push (scripts/build_images.sh --push),
`helm install oci://...` with the real helm against the real API server, the real node's containerd pulling over TLS
(certs.d hosts.toml, node.py) with the credentials the kubelet takes from the Pods' imagePullSecrets, the operator pod
from the pushed image, and a 2-rank ClassificationTrain from the pushed trainer image writing into a results folder
that nobody prepared (root-owned, as a fresh hostPath or NFS export is).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs, release
from e2e import registry as registry_mod
from e2e.conftest import wait_until

pytestmark = pytest.mark.without_session_operator

KIND = "ClassificationTrain"
PULL_SECRET = release.PULL_SECRET
BAD_PULL_SECRET = "regcred-wrong"
PATH = release.PATH


def test_push_tags_versioned_images_and_the_chart(registry: registry_mod.Registry, pushed: release.Pushed) -> None:
    """Each image under VERSION-COMMIT and VERSION (pyproject.toml's version, the checkout's commit), the chart as an
    OCI artifact under the same VERSION; the registry refuses anyone without the credentials."""
    version = release.version()
    for name in ("kestrel-trainer", "kestrel-operator"):
        for tag in (f"{version}-{pushed.commit}", version):
            assert f"{registry.host}/{PATH}/{name}:{tag}" in pushed.refs, pushed.refs
        status, body = registry.get(f"{PATH}/{name}/tags/list")
        assert status == 200 and set(body["tags"]) >= {version, f"{version}-{pushed.commit}"}, body
        assert registry.get(f"{PATH}/{name}/tags/list", authenticated=False)[0] == 401
    assert f"oci://{registry.host}/{PATH}/charts/kestrel:{version}" in pushed.refs, pushed.refs
    status, body = registry.get(f"{PATH}/charts/kestrel/tags/list")
    assert status == 200 and body["tags"] == [version], body


def test_chart_from_oci_and_trainer_pulled_with_pull_secrets_into_a_fresh_root_owned_folder(
        cluster: cl.ControlPlane, registry: registry_mod.Registry, pushed: release.Pushed, helm_oci: release.Helm,
        real_node: node_mod.RealNode, mpi_controller: str, kestrel_crds: list[str], e2e_workdir: Path,
        namespace: str) -> None:
    """helm install oci://HOST/kestrel/charts/kestrel -> the operator pod pulls its image from the registry (chart
    imagePullSecrets) on the real node; a ClassificationTrain with no spec.image (the chart's trainer image:
    repository + appVersion) and spec.imagePullSecrets runs 2 ranks from the pulled trainer image, writing into a
    results folder that is root-owned and was not prepared (spec.volumes.results.fixOwnership); `ctr images ls` on
    the node lists both pulled images. Wrong credentials: status ImagePullBackOff naming the image, and an Event.
    fixOwnership off on such a folder: Failed with the trainer's permission line naming the folder."""
    watched = f"e2e-reg-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", watched)
    wait_until(f"default ServiceAccount in {watched}", lambda: cluster.exists("serviceaccount", "default", watched))
    for ns in (namespace, watched):
        release.pull_secret(cluster, ns, PULL_SECRET, registry.docker_config_json(), e2e_workdir)
    release.pull_secret(cluster, watched, BAD_PULL_SECRET,
                        registry.docker_config_json(password="wrong-" + uuid.uuid4().hex), e2e_workdir)
    name = f"reg-{uuid.uuid4().hex[:6]}"
    release.install_chart(cluster, registry, pushed, helm_oci, name, namespace, watched, e2e_workdir)
    try:
        _run_from_the_registry(cluster, registry, pushed, real_node, e2e_workdir, namespace, watched)
    finally:
        helm_oci("uninstall", name, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


def _run_from_the_registry(cluster: cl.ControlPlane, registry: registry_mod.Registry, pushed: release.Pushed,
                           real_node: node_mod.RealNode, e2e_workdir: Path, namespace: str, watched: str) -> None:
    pod = release.operator_pod(cluster, namespace, real_node.name)
    assert pod["spec"]["containers"][0]["image"] == pushed.operator
    assert pod["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]

    ws = real_runs.make_workspace(cluster, watched, e2e_workdir / "registry-runs", image="")
    # A fresh volume as a provisioner or an NFS export gives it: owned by root, mode 0755. Nothing below it is made.
    os.chown(ws.results_dir, 0, 0)
    ws.results_dir.chmod(0o755)

    def train(name: str, fix: bool, **spec) -> dict:
        res = real_runs.train_resource(ws, name)
        del res["spec"]["image"]  # the operator's default: the chart's trainer image, tag = appVersion
        res["spec"]["imagePullPolicy"] = "IfNotPresent"
        res["spec"]["imagePullSecrets"] = [{"name": PULL_SECRET}]
        if fix:
            res["spec"]["volumes"]["results"]["fixOwnership"] = True
        res["spec"].update(spec)
        return res

    release.apply_once_the_webhook_answers(cluster, train("from-registry", fix=True))

    # Wrong credentials (Always: the node must ask the registry even once the image is there).
    bad = train("wrong-credentials", fix=True, imagePullSecrets=[{"name": BAD_PULL_SECRET}], imagePullPolicy="Always")
    cluster.apply(bad)
    trainer_ref = pushed.trainer

    def pull_refused() -> dict | None:
        st = ko.get_resource(cluster, KIND, "wrong-credentials", watched).get("status") or {}
        return st if st.get("reason") == "ImagePullBackOff" else None

    st = wait_until("wrong credentials -> ImagePullBackOff in status", pull_refused, timeout=240, interval=2)
    assert f"cannot pull image {trainer_ref}" in st["message"], st
    assert registry.password not in json.dumps(st)
    wait_until("a Warning Event ImagePullBackOff", lambda: any(
        e["type"] == "Warning" and e["reason"] == "ImagePullBackOff"
        for e in ko.events_for(cluster, watched, "wrong-credentials")), timeout=60)
    cluster.kubectl("delete", KIND.lower(), "wrong-credentials", "-n", watched, "--wait=false")

    done = ko.wait_phase(cluster, KIND, "from-registry", watched, "Succeeded", timeout=1200)
    folder = ws.results_of("from-registry")
    assert folder.stat().st_uid == real_runs.POD_UID, "the init container gave the folder to the trainer's user"
    assert (ws.run_folder(done) / "status.json").exists()
    refs = real_node.image_refs()
    assert trainer_ref in refs and pushed.operator in refs, sorted(refs)
    (job,) = ko.mpijobs_of(cluster, done)
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]

    # The same fresh root-owned folder without the option: the trainer's own line, naming the folder.
    off = train("no-fix", fix=False)
    cluster.apply(off)
    failed = ko.wait_phase(cluster, KIND, "no-fix", watched, "Failed", timeout=600)["status"]
    assert failed["reason"] == "TrainerFailed", failed
    assert "Permission denied" in failed["message"] and "/results/runs/" in failed["message"], failed
    assert "fixOwnership" in failed["message"], failed
    assert ws.results_of("no-fix").stat().st_uid == 0
