"""The e2e cluster's components, started as plain processes from the binaries e2e/build.sh built: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok with fake GPU nodes, the MPI Operator (or its test
double) and our operator. node.py adds the real node. Certificates come from certs.py, process handling from
processes.py, kubectl and API reads from kubectl.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e.certs import issue_client_cert, make_pki
from e2e.kubectl import KubeAccess, write_kubeconfig
from e2e.netns import in_netns
from e2e.processes import ControlPlaneError, Process, die_with_parent, free_port, port_in_use, wait_for

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
BUILD_SCRIPT = E2E_DIR / "build.sh"
KWOK_STAGES = E2E_DIR / "kwok-stages.yaml"
# kwok-stages.yaml fails Job-owned pods (the MPI launcher) in this namespace instead of completing them.
LAUNCHER_FAILS_NAMESPACE = "e2e-launcher-fails"
# ... and keeps them Running in this one (a run that is still going), and leaves pods with this annotation
# to the test, which then patches their status the way the kubelet would.
LAUNCHER_RUNS_NAMESPACE = "e2e-launcher-runs"
KUBELET_BY_TEST_ANNOTATION = "e2e.kestrel.dev/kubelet"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# The MPI Operator's health endpoint is hard-coded to :8080 in v0.8.0 (cmd/mpi-operator/app/server.go);
# nothing contacts it, but a second process already on the port makes the operator exit.
MPI_OPERATOR_HEALTH_PORT = 8080

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok",
            "kubelet", "kube-proxy", "coredns", "containerd", "containerd-shim-runc-v2", "ctr")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_VIP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR
# The MPI Operator's own MPIJob CRD (kubeflow.org/v2beta1), copied by build.sh from the same Go module as its binary.
MPIJOB_CRD = "kubeflow.org_mpijobs.yaml"


def bin_dir() -> Path:
    """The versioned cache folder build.sh writes to (it owns the naming, so ask it)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def pinned_version(module: str) -> str:
    """`module`'s version as gomod/cluster/go.mod pins it (build.sh reads the pins, so ask it)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--pinned", module], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def missing_binaries(folder: Path) -> list[str]:
    """What build.sh has not (yet) put in `folder`: a binary of BINARIES, or the MPIJob CRD file."""
    missing = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
    return missing + ([] if (folder / MPIJOB_CRD).is_file() else [MPIJOB_CRD])


@dataclass
class ControlPlane(KubeAccess):
    """The running cluster: its addresses, credentials and kubectl (KubeAccess) and the processes it runs."""

    processes: dict[str, Process] = field(default_factory=dict)
    etcd_port: int = 0
    # False (e2e): every process dies with the one that started it. True (the dev cluster): they outlive it and are
    # stopped by PID from its state file (devcluster.py).
    detached: bool = False
    # Where the API server listens when not only on `address`: the dev cluster's "0.0.0.0" (its namespace's
    # addresses, including the link from the machine).
    bind_address: str = ""

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # -- processes
    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None, netns: str | None = None) -> Process:
        """Start `argv` as process `name` (log logs/<name>.log), in the network namespace `netns` (a real node's)
        or else in this process's own."""
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [str(a) for a in argv]
        if netns is not None:
            argv = in_netns(netns, argv)
        log = self.logs / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        handle.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(map(str, argv))}\n".encode())
        handle.flush()
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env if env is not None else self.env(), cwd=cwd, start_new_session=True,
            preexec_fn=None if self.detached else die_with_parent,
        )
        handle.close()
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    def stop_all(self) -> None:
        """Stop every process we started, newest first, each by its own PID."""
        for proc in reversed(list(self.processes.values())):
            proc.stop()


def start_etcd(cp: ControlPlane) -> None:
    client, peer = free_port(), free_port()
    cp.etcd_port = client
    proc = cp.start("etcd", [
        cp.bin / "etcd", "--name", "e2e", "--data-dir", cp.workdir / "etcd",
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"e2e=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync=true", "--log-level", "warn",
    ])

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=2) as resp:  # noqa: S310
            return json.loads(resp.read()).get("health") == "true"

    wait_for("etcd /health", healthy, timeout=60, proc=proc)


def start_apiserver(cp: ControlPlane) -> None:
    cp.apiserver_port = free_port()
    kubelet_client = issue_client_cert(cp.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                       ["system:masters"])
    # The `kubernetes` Service's endpoint is the advertise address; Endpoints validation rejects 127.0.0.0/8,
    # so without a namespace address (kwok-only use) the reconciler is off instead of failing every 10 s.
    # Pods get ServiceAccount tokens (admission plugin ServiceAccount, on by default): real pods use them.
    reconciler = ["--endpoint-reconciler-type=none"] if ipaddress.ip_address(cp.address).is_loopback else []
    tokens = cp.workdir / "tokens.csv"
    tokens.write_text(f'{cp.token},admin,admin,"system:masters"\n')
    tokens.chmod(0o600)
    proc = cp.start("kube-apiserver", [
        cp.bin / "kube-apiserver",
        f"--etcd-servers=http://127.0.0.1:{cp.etcd_port}",
        f"--bind-address={cp.bind_address or cp.address}", f"--advertise-address={cp.address}",
        f"--secure-port={cp.apiserver_port}",
        f"--tls-cert-file={cp.pki['apiserver.crt']}", f"--tls-private-key-file={cp.pki['apiserver.key']}",
        f"--cert-dir={cp.workdir / 'apiserver-certs'}",
        f"--token-auth-file={tokens}",
        # Client certificates from our CA: the kubelet authenticates as system:node:<name> (group system:nodes),
        # which the Node authorizer serves; the API server shows its own to the kubelet (logs, exec).
        f"--client-ca-file={cp.pki['ca.crt']}",
        f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
        # The node's name resolves nowhere (the namespace has no resolver for it): dial its address.
        "--kubelet-preferred-address-types=InternalIP",
        # Webhooks and aggregated APIs behind a Service are called at an endpoint's pod IP (routed to every node's
        # pod network, netns.py), not at the ClusterIP: the control plane's namespace runs no kube-proxy, as on a
        # control-plane host without one (Kubernetes documents this flag for that case).
        "--enable-aggregator-routing=true",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={cp.pki['sa.pub']}",
        f"--service-account-signing-key-file={cp.pki['sa.key']}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        *reconciler,
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=1",
    ])
    wait_for("kube-apiserver /readyz", cp.readyz, timeout=180, interval=0.5, proc=proc)
    write_kubeconfig(cp)


def restart_apiserver(cp: ControlPlane, down_seconds: float = 0.0) -> None:
    """Stop kube-apiserver (SIGTERM) and start it again with the same flags and port; etcd keeps the data.
    Every client (controllers, kwok, our operator) sees its connections and watches drop. Call it from the
    main thread: children die with the thread that started them (PR_SET_PDEATHSIG)."""
    proc = cp.processes["kube-apiserver"]
    argv = [str(a) for a in proc.popen.args]
    proc.stop()
    time.sleep(down_seconds)
    new = cp.start("kube-apiserver", argv)
    wait_for("kube-apiserver /readyz after restart", cp.readyz, timeout=180, interval=0.5, proc=new)


def _component_kubeconfig(cp: ControlPlane) -> list[str]:
    return [f"--kubeconfig={cp.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]


def start_controller_manager(cp: ControlPlane) -> None:
    proc = cp.start("kube-controller-manager", [
        cp.bin / "kube-controller-manager", *_component_kubeconfig(cp),
        f"--secure-port={free_port()}",
        f"--cert-dir={cp.workdir / 'kcm-certs'}",
        f"--service-account-private-key-file={cp.pki['sa.key']}",
        f"--root-ca-file={cp.pki['ca.crt']}",
        "--v=1",
    ])
    # The kube-system ServiceAccount controller is one of the first to start: use it as the ready signal.
    wait_for(
        "kube-controller-manager (default ServiceAccount created)",
        lambda: cp.exists("serviceaccount", "default", "default"), timeout=120, interval=1, proc=proc,
    )


def _component_healthy(port: int) -> bool:
    """/healthz of a component's own serving port (self-signed cert, always-allowed path)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # its throwaway self-signed cert; only /healthz is read
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:  # noqa: S310
        return resp.status == 200


def start_scheduler(cp: ControlPlane) -> None:
    port = free_port()
    proc = cp.start("kube-scheduler", [
        cp.bin / "kube-scheduler", *_component_kubeconfig(cp), f"--secure-port={port}", "--v=1",
    ])
    wait_for("kube-scheduler /healthz", lambda: _component_healthy(port), timeout=60, proc=proc)


def fake_gpu_node(name: str, gpus: int = 8) -> dict:
    """A Node that kwok takes over (by annotation) and reports Ready, with GPU capacity to schedule on."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true"},
        },
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def start_kwok(cp: ControlPlane, nodes: Sequence[str]) -> None:
    proc = cp.start("kwok", [
        cp.bin / "kwok", f"--kubeconfig={cp.kubeconfig}", f"--config={KWOK_STAGES}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{free_port()}",
        "--cidr=10.0.1.0/24",
        "--node-lease-duration-seconds=40",
    ])
    for name in nodes:
        cp.apply(fake_gpu_node(name))

    def all_ready() -> bool:
        for name in nodes:
            conds = cp.get("node", name).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return False
        return True

    wait_for(f"kwok nodes {list(nodes)} Ready", all_ready, timeout=90, interval=1, proc=proc)


DEFAULT_GPU_NODES = ("gpu-node-0", "gpu-node-1", "gpu-node-2", "gpu-node-3")


def start_control_plane(bin: Path, workdir: Path, gpu_nodes: Sequence[str] = DEFAULT_GPU_NODES,
                        address: str = "127.0.0.1", *, detached: bool = False, bind_address: str = "",
                        extra_ips: Sequence[str] = ()) -> ControlPlane:
    """etcd -> kube-apiserver (on `address`) -> controller-manager -> scheduler -> kwok with fake GPU nodes.
    `detached`, `bind_address`: see ControlPlane; `extra_ips`: more addresses in the API server's certificate.

    On any failure everything started so far is stopped before the error propagates.
    """
    cp = ControlPlane(bin=bin, workdir=workdir, address=address, detached=detached, bind_address=bind_address)
    cp.pki = make_pki(workdir / "pki", ips=["127.0.0.1", address, SERVICE_VIP, *extra_ips])
    try:
        start_etcd(cp)
        start_apiserver(cp)
        start_controller_manager(cp)
        start_scheduler(cp)
        if gpu_nodes:
            start_kwok(cp, gpu_nodes)
    except BaseException:
        cp.stop_all()
        raise
    return cp


API_ONLY_BINARIES = ("etcd", "kube-apiserver", "kubectl")


def start_api_only(bin: Path, workdir: Path) -> ControlPlane:
    """etcd and kube-apiserver only: enough for tests and benchmarks in which objects are only created and
    read (no pods are scheduled or run, nothing is garbage-collected)."""
    cp = ControlPlane(bin=bin, workdir=workdir)
    cp.pki = make_pki(workdir / "pki", ips=["127.0.0.1", SERVICE_VIP])
    try:
        start_etcd(cp)
        start_apiserver(cp)
    except BaseException:
        cp.stop_all()
        raise
    return cp


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ MPI and our operator

def mpijob_crd_paths(folder: Path | None = None) -> list[Path]:
    """The MPI Operator's own MPIJob CRD, which build.sh copies from its Go module next to the binaries (`folder`,
    default bin_dir()); the MPI Operator runs against the schema it was released with."""
    path = (folder or bin_dir()) / MPIJOB_CRD
    if not path.is_file():
        raise ControlPlaneError(f"no MPIJob CRD at {path}: run `bash e2e/build.sh` (it copies the MPI Operator's)")
    return [path]


def our_crd_paths() -> list[Path]:
    return sorted((REPO_ROOT / "crds").glob("*.yaml"))


def apply_crds(cp: ControlPlane, paths: Sequence[Path]) -> list[str]:
    """Apply CRD files with the built kubectl and wait until the API server serves each one."""
    names: list[str] = []
    for path in paths:
        out = cp.kubectl("apply", "--server-side", "-f", str(path)).stdout
        names += [
            line.split()[0].split("/", 1)[1]
            for line in out.splitlines()
            if line.startswith("customresourcedefinition")
        ]
    # Polled rather than `kubectl wait`, which fails at once while a new CRD has no status yet (the MPI Operator's
    # 670 KB CRD takes the API server a moment).
    for name in names:
        wait_for(f"CRD {name} Established", lambda name=name: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (cp.get("crd", name).get("status") or {}).get("conditions") or []), timeout=60, interval=0.5)
    return names


def start_mpi_operator(cp: ControlPlane) -> Process:
    """The real Kubeflow MPI Operator (v2 controller), cluster-scoped, leader lock in `mpi-operator`."""
    if port_in_use(MPI_OPERATOR_HEALTH_PORT):
        raise ControlPlaneError(
            f"port {MPI_OPERATOR_HEALTH_PORT} is taken: the MPI Operator v0.8.0 hard-codes its health port "
            "there and would exit; free it or run with KESTREL_E2E_MPI=double"
        )
    cp.kubectl("create", "namespace", "mpi-operator", check=False)
    proc = cp.start("mpi-operator", [
        cp.bin / "mpi-operator", f"--kubeConfig={cp.kubeconfig}", "--lock-namespace=mpi-operator",
        "--threadiness=4", "--kube-api-qps=50", "--kube-api-burst=100", "--v=2",
    ])
    wait_for(
        "MPI Operator leader lease", lambda: cp.exists("lease", "mpi-operator", "mpi-operator"),
        timeout=60, interval=0.5, proc=proc,
    )
    return proc


def start_mpi_test_double(cp: ControlPlane) -> Process:
    """Our Python stand-in for the MPI Operator, used only when its binary is absent (see its docstring)."""
    proc = cp.start("mpijob-test-double", [sys.executable, E2E_DIR / "mpijob_test_double.py"])
    wait_for("MPIJob test double ready", lambda: "ready" in proc.log.read_text(), timeout=60, proc=proc)
    return proc


@dataclass
class Operator:
    """Our operator (`kestrel-operator run`) as a subprocess, so tests can kill and restart it."""

    cp: ControlPlane
    argv: list[str]
    env: dict[str, str]
    proc: Process | None = None
    starts: int = 0

    def start(self) -> Process:
        self.starts += 1
        self.proc = self.cp.start(f"kestrel-operator-{self.starts}", self.argv, env=self.env, cwd=REPO_ROOT)
        time.sleep(0.5)
        if not self.proc.alive():
            raise ControlPlaneError(f"kestrel-operator exited at once; log {self.proc.log}:\n{self.proc.log_tail()}")
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log_text(self) -> str:
        return "\n".join(
            p.log.read_text(errors="replace") for n, p in self.cp.processes.items() if n.startswith("kestrel-operator")
        )
