"""A real Kubernetes control plane, run from binaries built by e2e/build.sh: the one import the tests and bench/
scripts use (`from e2e import cluster as cl`), gathering the modules that each do one job.

There is no kind/k3d here: etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as plain
processes, kwok plays the kubelet for fake GPU nodes (it moves pods through their phases without running
anything), and node.py adds one real node (kubelet + containerd). The conftest runs all of it inside the
session's own network namespace (netns.py): components listen on 127.0.0.1, the API server on the
namespace's node address so pods can reach it. Every port is one the OS handed out, every process is
stopped by its own PID, and the temp dir with all logs is kept when something failed.

- certs.py: the CA, the API server's serving certificate, client certificates, the service-account keys;
- processes.py: starting waits, stopping by PID, free ports, listening sockets;
- kubectl.py: KubeAccess (kubectl bound to the cluster, HTTPS reads of the API) and the kubeconfig;
- components.py: ControlPlane and each component's start-up, the CRDs, the MPI Operator, our operator.
"""

from __future__ import annotations

from e2e.certs import issue_client_cert, make_pki
from e2e.components import (
    API_ONLY_BINARIES,
    BINARIES,
    BUILD_SCRIPT,
    DEFAULT_GPU_NODES,
    E2E_DIR,
    GPU_RESOURCE,
    KUBELET_BY_TEST_ANNOTATION,
    KWOK_NODE_ANNOTATION,
    KWOK_STAGES,
    LAUNCHER_FAILS_NAMESPACE,
    LAUNCHER_RUNS_NAMESPACE,
    MPI_OPERATOR_HEALTH_PORT,
    MPIJOB_CRD,
    REPO_ROOT,
    SERVICE_CIDR,
    SERVICE_VIP,
    ControlPlane,
    Operator,
    apply_crds,
    bin_dir,
    fake_gpu_node,
    missing_binaries,
    mpijob_crd_paths,
    our_crd_paths,
    pinned_version,
    remove_workdir,
    restart_apiserver,
    start_api_only,
    start_apiserver,
    start_control_plane,
    start_controller_manager,
    start_etcd,
    start_kwok,
    start_mpi_operator,
    start_mpi_test_double,
    start_scheduler,
)
from e2e.kubectl import KubeAccess, KubectlError, write_kubeconfig
from e2e.processes import ControlPlaneError, Process, free_port, listening_addresses, port_in_use, wait_for

__all__ = [
    "API_ONLY_BINARIES", "BINARIES", "BUILD_SCRIPT", "DEFAULT_GPU_NODES", "E2E_DIR", "GPU_RESOURCE",
    "KUBELET_BY_TEST_ANNOTATION", "KWOK_NODE_ANNOTATION", "KWOK_STAGES", "LAUNCHER_FAILS_NAMESPACE",
    "LAUNCHER_RUNS_NAMESPACE", "MPIJOB_CRD", "MPI_OPERATOR_HEALTH_PORT", "REPO_ROOT", "SERVICE_CIDR", "SERVICE_VIP",
    "ControlPlane", "ControlPlaneError", "KubeAccess", "KubectlError", "Operator", "Process", "apply_crds",
    "bin_dir", "fake_gpu_node", "free_port", "issue_client_cert", "listening_addresses", "make_pki",
    "missing_binaries", "mpijob_crd_paths", "our_crd_paths", "pinned_version", "port_in_use", "remove_workdir",
    "restart_apiserver", "start_api_only", "start_apiserver", "start_control_plane", "start_controller_manager",
    "start_etcd", "start_kwok", "start_mpi_operator", "start_mpi_test_double", "start_scheduler", "wait_for",
    "write_kubeconfig",
]
