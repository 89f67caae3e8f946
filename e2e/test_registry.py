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
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e import registry as registry_mod
from e2e.conftest import _image, wait_until

KIND = "ClassificationTrain"
PULL_SECRET = "regcred"
BAD_PULL_SECRET = "regcred-wrong"
PATH = "kestrel"  # images under HOST/kestrel/, the chart under HOST/kestrel/charts


def _version() -> str:
    import tomllib

    return tomllib.loads((cl.REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def _commit() -> str:
    return subprocess.run(["git", "-C", str(cl.REPO_ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module", autouse=True)
def _no_session_operator(operator: cl.Operator) -> Iterator[None]:
    """The chart's operator pod (from the registry) reconciles this module's namespace; the session's cluster-wide
    operator would too. Stopped for the module, started again after it (as test_helm.py)."""
    operator.stop()
    yield
    operator.start()


@pytest.fixture(scope="module")
def registry(cluster: cl.ControlPlane) -> Iterator[registry_mod.Registry]:
    try:
        reg = registry_mod.start(cluster)
    except (cl.ControlPlaneError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the registry did not come up: {exc}")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def pushed(cluster: cl.ControlPlane, registry: registry_mod.Registry) -> tuple[dict[str, str], str]:
    """scripts/build_images.sh --only trainer,operator --push HOST/kestrel, credentials from the environment (the
    images are built first in the machine's namespace, as the other fixtures do; the push runs here, in the control
    plane's namespace, where the registry listens). Returns {ref: digest} of what it pushed, the chart included,
    and the checkout's commit read by git just before the push (the tag's expected suffix)."""
    for name in ("trainer", "operator"):
        _image(name)  # built (cached) with the machine's network
    script = Path(os.environ.get("KESTREL_BUILD_IMAGES") or node_mod.BUILD_IMAGES)
    commit = _commit()
    env = {**os.environ, "KESTREL_REGISTRY_USER": registry.user, "KESTREL_REGISTRY_PASSWORD": registry.password,
           "KESTREL_REGISTRY_CA": str(registry.ca), "KESTREL_HELM": str(cluster.bin / "helm")}
    out = subprocess.run(["bash", str(script), "--only", "trainer,operator", "--push", f"{registry.host}/{PATH}"],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert registry.password not in out.stdout + out.stderr  # never echoed
    refs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["pushed"]:
            refs[parts[1]] = parts[2]
        elif parts[:1] == ["chart"]:
            refs[f"{parts[1]}:{parts[2]}"] = parts[3]
    return refs, commit


@pytest.fixture(scope="module")
def helm(cluster: cl.ControlPlane, registry: registry_mod.Registry):
    """The real helm with its own home and the registry's credentials in an auth file (--registry-config)."""
    home = cluster.workdir / "helm-home-registry"
    env = cluster.env(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                      HELM_DATA_HOME=str(home / "data"))
    auth = registry.auth_file()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(cluster.bin / "helm"), *args, "--registry-config", str(auth)],
                             capture_output=True, text=True, env=env, timeout=600)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    return run


def _pull_secret(cluster: cl.ControlPlane, namespace: str, name: str, config_json: str, folder: Path) -> None:
    """A kubernetes.io/dockerconfigjson Secret from a file (credentials never on a command line)."""
    path = folder / f"{name}-{namespace}.json"
    path.touch(mode=0o600)
    path.write_text(config_json)
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace, "--type=kubernetes.io/dockerconfigjson",
                    f"--from-file=.dockerconfigjson={path}")
    path.unlink()


def test_push_tags_versioned_images_and_the_chart(registry: registry_mod.Registry,
                                                 pushed: tuple[dict[str, str], str]) -> None:
    """Each image under VERSION-COMMIT and VERSION (pyproject.toml's version, the checkout's commit), the chart as an
    OCI artifact under the same VERSION; the registry refuses anyone without the credentials."""
    (pushed, commit), version = pushed, _version()
    for name in ("kestrel-trainer", "kestrel-operator"):
        for tag in (f"{version}-{commit}", version):
            assert f"{registry.host}/{PATH}/{name}:{tag}" in pushed, pushed
        status, body = registry.get(f"{PATH}/{name}/tags/list")
        assert status == 200 and set(body["tags"]) >= {version, f"{version}-{commit}"}, body
        assert registry.get(f"{PATH}/{name}/tags/list", authenticated=False)[0] == 401
    assert f"oci://{registry.host}/{PATH}/charts/kestrel:{version}" in pushed, pushed
    status, body = registry.get(f"{PATH}/charts/kestrel/tags/list")
    assert status == 200 and body["tags"] == [version], body


def test_chart_from_oci_and_trainer_pulled_with_pull_secrets_into_a_fresh_root_owned_folder(
        cluster: cl.ControlPlane, registry: registry_mod.Registry, pushed: tuple[dict[str, str], str], helm,
        real_node: node_mod.RealNode, mpi_controller: str, kestrel_crds: list[str], e2e_workdir: Path,
        namespace: str) -> None:
    """helm install oci://HOST/kestrel/charts/kestrel -> the operator pod pulls its image from the registry (chart
    imagePullSecrets) on the real node; a ClassificationTrain with no spec.image (the chart's trainer image:
    repository + appVersion) and spec.imagePullSecrets runs 2 ranks from the pulled trainer image, writing into a
    results folder that is root-owned and was not prepared (spec.volumes.results.fixOwnership); `ctr images ls` on
    the node lists both pulled images. Wrong credentials: status ImagePullBackOff naming the image, and an Event.
    fixOwnership off on such a folder: Failed with the trainer's permission line naming the folder."""
    version = _version()
    host = f"{registry.host}/{PATH}"
    watched = f"e2e-reg-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", watched)
    wait_until(f"default ServiceAccount in {watched}", lambda: cluster.exists("serviceaccount", "default", watched))
    for ns in (namespace, watched):
        _pull_secret(cluster, ns, PULL_SECRET, registry.docker_config_json(), e2e_workdir)
    _pull_secret(cluster, watched, BAD_PULL_SECRET, registry.docker_config_json(password="wrong-" + uuid.uuid4().hex),
                 e2e_workdir)

    release = f"reg-{uuid.uuid4().hex[:6]}"
    values = e2e_workdir / f"{release}-values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": f"{host}/kestrel-operator"},  # tag: the chart's appVersion
        "trainer": {"image": {"repository": f"{host}/kestrel-trainer"}},  # tag: the chart's appVersion
        "imagePullSecrets": [{"name": PULL_SECRET}],
        "nodeSelector": dict(node_mod.NODE_SELECTOR), "tolerations": list(node_mod.NODE_TOLERATIONS),
        "watchNamespaces": [watched]}))
    helm("install", release, f"oci://{host}/charts/kestrel", "--version", version, "--ca-file", str(registry.ca),
         "-n", namespace, "-f", str(values), "--wait", "--timeout", "8m")
    try:
        _run_from_the_registry(cluster, registry, real_node, e2e_workdir, namespace, watched, host, version)
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


def _run_from_the_registry(cluster: cl.ControlPlane, registry: registry_mod.Registry, real_node: node_mod.RealNode,
                           e2e_workdir: Path, namespace: str, watched: str, host: str, version: str) -> None:
    (pod,) = [p for p in cluster.get("pods", namespace=namespace)["items"]
              if p["metadata"]["labels"].get("app.kubernetes.io/name") == "kestrel"
              and p["spec"].get("nodeName") == real_node.name and p["status"].get("phase") == "Running"]
    assert pod["spec"]["containers"][0]["image"] == f"{host}/kestrel-operator:{version}"
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

    good = train("from-registry", fix=True)

    def accepted() -> bool:
        out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(good), check=False)
        if out.returncode != 0:
            raise AssertionError(out.stderr.strip())
        return True

    # The chart's webhook answers once kube-proxy routes its Service: retry the apply until it is accepted.
    wait_until("the chart's webhook accepting the resource", accepted, timeout=90, interval=2)

    # Wrong credentials (Always: the node must ask the registry even once the image is there).
    bad = train("wrong-credentials", fix=True, imagePullSecrets=[{"name": BAD_PULL_SECRET}], imagePullPolicy="Always")
    cluster.apply(bad)
    trainer_ref = f"{host}/kestrel-trainer:{version}"

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
    assert trainer_ref in refs and f"{host}/kestrel-operator:{version}" in refs, sorted(refs)
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
