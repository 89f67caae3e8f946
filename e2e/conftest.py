"""Session fixtures for the end-to-end suite: one real control plane shared by every test.

The binaries come from e2e/build.sh (a cold build takes a long time, so it is never started implicitly):
when they are absent the suite is skipped with a message, unless KESTREL_E2E_BUILD is set, in which case the
fixture runs build.sh first. CI sets it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e import cluster as cl
from e2e import kueue as kueue_mod
from e2e import node as node_mod
from e2e import registry as registry_mod
from e2e import release
from e2e.netns import NetNS
from tests.strict_mode import STRICT_ENV, strict_mode

if TYPE_CHECKING:  # real_runs imports kestrel_objects, which imports wait_until from here
    from e2e import real_runs

FAILED_KEY = pytest.StashKey[bool]()
MPI_KEY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Say which MPI controller the run used: the real operator or the test double."""
    mode = config.stash.get(MPI_KEY, None)
    if mode:
        what = "the real Kubeflow MPI Operator" if mode == "real" else "the TEST DOUBLE e2e/mpijob_test_double.py"
        terminalreporter.write_line(f"e2e: MPIJobs were run by {what}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ARG001
    report = yield
    if report.failed:
        item.session.stash[FAILED_KEY] = True
    return report


def _binaries() -> Path:
    folder = cl.bin_dir()
    missing = cl.missing_binaries(folder)
    if not missing:
        return folder
    if not os.environ.get("KESTREL_E2E_BUILD"):
        pytest.skip(
            f"e2e binaries missing in {folder} ({', '.join(missing)}): run `bash e2e/build.sh` "
            "(tens of minutes cold) or set KESTREL_E2E_BUILD=1 to build them from this run"
        )
    subprocess.run(["bash", str(cl.BUILD_SCRIPT)], check=True)
    missing = cl.missing_binaries(folder)
    if missing:
        pytest.fail(f"e2e/build.sh finished but {missing} are still missing in {folder}")
    return folder


@pytest.fixture(scope="session")
def e2e_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Temp dir for etcd data, keys and logs: removed after a clean run, kept (and named) after a failure."""
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-e2e-"))
    yield workdir
    if request.session.stash.get(FAILED_KEY, False) or os.environ.get("KESTREL_E2E_KEEP"):
        sys.stderr.write(f"\n[e2e] kept control-plane logs and data in {workdir}/logs\n")
    else:
        cl.remove_workdir(workdir)


@pytest.fixture(scope="session")
def session_netns() -> Iterator[NetNS]:
    """The session's own control-plane network namespace (netns.py), entered by this process for the whole session;
    the real nodes' namespaces hang off it."""
    ns = NetNS.enter_new(f"kestrel-e2e-{os.getpid()}")
    try:
        yield ns
    finally:
        ns.leave()


@pytest.fixture(scope="session")
def cluster(e2e_workdir: Path, request: pytest.FixtureRequest) -> Iterator[cl.ControlPlane]:
    """etcd, kube-apiserver, controller-manager, scheduler and kwok with four fake 8-GPU nodes, all inside
    the session's network namespace (binaries are built first: that needs the machine's network)."""
    folder = _binaries()
    ns: NetNS = request.getfixturevalue("session_netns")
    cp = cl.start_control_plane(folder, e2e_workdir, address=ns.node_ip)
    try:
        yield cp
    finally:
        cp.stop_all()


@pytest.fixture
def namespace(cluster: cl.ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting (the namespace controller finishes).
    Returned once its default ServiceAccount exists: pods need one (ServiceAccount admission)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(f"default ServiceAccount in {name}", lambda: cluster.exists("serviceaccount", "default", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_until(what: str, check, timeout: float = 60, interval: float = 0.5):
    """Poll check() until it returns a truthy value and return that value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a transient miss; reported on timeout
            last_error = exc
        time.sleep(interval)
    suffix = f" (last error: {last_error})" if last_error else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


def repo_path(*parts: str) -> Path:
    return cl.REPO_ROOT.joinpath(*parts)


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


def _mpi_mode(bin_folder: Path) -> str:
    """`real` (the Kubeflow MPI Operator binary) unless it was not built or KESTREL_E2E_MPI=double.
    In strict mode (KESTREL_STRICT=1, as in CI) the test double is refused: the suite fails instead."""
    forced = os.environ.get("KESTREL_E2E_MPI", "")
    built = os.access(bin_folder / "mpi-operator", os.X_OK)
    mode = forced if forced in ("real", "double") else "real" if built else "double"
    if mode == "double" and strict_mode():
        why = "KESTREL_E2E_MPI=double" if forced == "double" else f"{bin_folder / 'mpi-operator'} was not built"
        pytest.fail(f"{STRICT_ENV}=1 refuses the MPIJob test double ({why}): the suite must run the real "
                    "Kubeflow MPI Operator (bash e2e/build.sh builds it)", pytrace=False)
    return mode


@pytest.fixture(scope="session")
def mpi_controller(cluster: cl.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """The MPIJob CRD applied and a controller for it running; yields "real" or "double"."""
    try:
        crds = cl.mpijob_crd_paths(cluster.bin)  # the MPI Operator's own, from its Go module (build.sh)
    except cl.ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    cl.apply_crds(cluster, crds)
    mode = _mpi_mode(cluster.bin)
    request.config.stash[MPI_KEY] = mode
    proc = cl.start_mpi_operator(cluster) if mode == "real" else cl.start_mpi_test_double(cluster)
    yield mode
    proc.stop()


@pytest.fixture(scope="session")
def kestrel_crds(cluster: cl.ControlPlane) -> list[str]:
    paths = cl.our_crd_paths()
    if not paths:
        pytest.fail("our CRDs (crds/*.yaml) are missing")
    return cl.apply_crds(cluster, paths)


def _operator_argv() -> list[str]:
    exe = Path(sys.executable).with_name("kestrel-operator")
    if not exe.exists():
        pytest.fail(f"{exe} not installed (pip install -e .[operator])")
    probe = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"`kestrel-operator run --help` failed: {probe.stderr.strip().splitlines()[-1:]}")
    return [str(exe), "run"]


@pytest.fixture(scope="session")
def operator(cluster: cl.ControlPlane, mpi_controller: str, kestrel_crds: list[str]) -> Iterator[cl.Operator]:
    """Our operator as a subprocess with the cluster's KUBECONFIG; tests may kill() and start() it."""
    env = cluster.env(
        KESTREL_GPUS_PER_NODE="8",
        KESTREL_DEFAULT_IMAGE="kestrel-trainer:e2e",
        # GPU runs here are kwok's (no container runs); the real node's runs are gpus 0 and get the CPU image
        KESTREL_GPU_IMAGE="kestrel-trainer:e2e",
        KESTREL_RESYNC_SECONDS="5",
        KESTREL_LOG_LEVEL="DEBUG",
        PYTHONUNBUFFERED="1",
    )
    op = cl.Operator(cp=cluster, argv=_operator_argv(), env=env)
    op.start()
    yield op
    op.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "without_session_operator: the module runs its own operator; the session's "
                            "is stopped for it")


@pytest.fixture(scope="module", autouse=True)
def _without_session_operator(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module marked `without_session_operator` runs its own operator (the chart's pod): the session's
    cluster-wide operator process would reconcile that module's namespaces too, and a test of the chart's
    ServiceAccount could pass on its work. Stopped for such a module, started again after it."""
    if request.node.get_closest_marker("without_session_operator") is None:
        yield
        return
    operator = request.getfixturevalue("operator")
    operator.stop()
    yield
    operator.start()


@pytest.fixture(scope="module")
def kueue(cluster: cl.ControlPlane, mpi_controller: str) -> Iterator[kueue_mod.Kueue]:  # noqa: ARG001 - its CRD
    """Kueue's controller (gomod/kueue, e2e/kueue.py) with the MPIJob integration, for one test module: its
    webhooks are removed and the process stopped after it, so other modules' MPIJobs never pass through Kueue."""
    if not os.access(kueue_mod.binary(), os.X_OK):
        if not os.environ.get("KESTREL_E2E_BUILD"):
            why = f"no Kueue binary at {kueue_mod.binary()}: run `bash e2e/build.sh` or set KESTREL_E2E_BUILD=1"
            if strict_mode():
                pytest.fail(f"{STRICT_ENV}=1: {why}", pytrace=False)
            pytest.skip(why)
        subprocess.run(["bash", str(cl.BUILD_SCRIPT)], check=True)
    try:
        running = kueue_mod.start(cluster)
    except cl.ControlPlaneError as exc:
        pytest.fail(f"Kueue did not come up: {exc}")
    yield running
    running.stop()


# ------------------------------------------------------------------------------------------- real node

def _image(name: str) -> node_mod.Image:
    """localhost/kestrel-NAME from scripts/build_images.sh (cached by its inputs) as an OCI archive.
    KESTREL_BUILD_IMAGES points at another copy of the script (e.g. a worktree where it is being written)."""
    try:
        return node_mod.images([name])[name]
    except node_mod.NodeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def real_node(cluster: cl.ControlPlane, session_netns: NetNS) -> Iterator[node_mod.RealNode]:
    """The first real node (its own namespace: containerd, kubelet, kube-proxy; the cluster's CoreDNS) running the
    sandbox image."""
    try:
        node = node_mod.start_real_node(cluster, session_netns, _image("pause"))
    except (node_mod.NodeError, cl.ControlPlaneError) as exc:
        pytest.fail(f"real node did not come up: {exc}")
    yield node
    forced = node_mod.stop_real_node(node, session_netns)
    if forced:
        sys.stderr.write(f"\n[e2e] real node teardown had to force: {forced}\n")


@pytest.fixture(scope="session")
def trainer_image(real_node: node_mod.RealNode) -> str:
    """The CPU trainer image, imported into the real node's containerd; returns its reference."""
    image = _image("trainer")
    real_node.load(image)
    return image.ref


@pytest.fixture(scope="session")
def registry(cluster: cl.ControlPlane) -> Iterator[registry_mod.Registry]:
    """The session's OCI registry (registry.py) on the control plane's address."""
    try:
        reg = registry_mod.start(cluster)
    except (cl.ControlPlaneError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the registry did not come up: {exc}")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def pushed(cluster: cl.ControlPlane, registry: registry_mod.Registry) -> release.Pushed:
    """The trainer and operator images and the chart, pushed once per session by scripts/build_images.sh --push."""
    for name in ("trainer", "operator"):
        _image(name)  # built (cached) with the machine's network
    return release.push(cluster, registry)


@pytest.fixture(scope="session")
def helm_oci(cluster: cl.ControlPlane, registry: registry_mod.Registry) -> release.Helm:
    """The real helm, logged in to the session's registry through an auth file."""
    return release.helm(cluster, registry)


@pytest.fixture(scope="module")
def second_real_node(cluster: cl.ControlPlane, session_netns: NetNS, real_node: node_mod.RealNode,
                     trainer_image: str) -> Iterator[node_mod.RealNode]:  # noqa: ARG001 - on the first node too
    """A second real node (real-node-1: labelled and tainted like the first, its own namespace and pod network
    routed to the first's) with the sandbox and trainer images, for one test module; removed for good after it (its
    pods deleted, its processes stopped, its Node object deleted), so later modules see one real node again."""
    try:
        (node,) = node_mod.start_real_nodes(cluster, session_netns, _image("pause"), count=1, first=1,
                                            images=(_image("trainer"),))
    except (node_mod.NodeError, cl.ControlPlaneError) as exc:
        pytest.fail(f"second real node did not come up: {exc}")
    yield node
    forced = node_mod.stop_real_node(node, session_netns, forget=True)
    if forced:
        sys.stderr.write(f"\n[e2e] second real node teardown had to force: {forced}\n")


@pytest.fixture(scope="session")
def real_workspace(cluster: cl.ControlPlane, e2e_workdir: Path, trainer_image: str,
                   operator: cl.Operator) -> real_runs.Workspace:  # noqa: ARG001 - the operator must run
    """A namespace with the key Secret and hostPath PV/PVCs (real Fashion-MNIST subset, results), shared by
    the real-run tests: later tests (prune, export) reuse the trained results in it."""
    from e2e import real_runs

    name = f"e2e-real-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(f"default ServiceAccount in {name}", lambda: cluster.exists("serviceaccount", "default", name))
    return real_runs.make_workspace(cluster, name, e2e_workdir / "real-runs", trainer_image)


@pytest.fixture(scope="session")
def trained(cluster: cl.ControlPlane, real_workspace: real_runs.Workspace) -> dict:
    """The 2-rank ClassificationTrain run to Succeeded on the real node (once per session), tracked by MLflow
    (real_runs.MLFLOW_ENV)."""
    from e2e import real_runs

    resource = real_runs.train_resource(real_workspace, "fashion", env=real_runs.MLFLOW_ENV)
    return real_runs.run_to_end(cluster, real_workspace, resource, "Succeeded")
