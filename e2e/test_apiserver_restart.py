"""kube-apiserver restarted while the operator reconciles a burst: no resource is lost, the watches
reconnect (resources applied after the restart are reconciled from the new watch), nothing is duplicated.

Its own control plane, etcd and kube-apiserver only (`cluster.start_api_only`), so restarting the API
server cannot disturb the shared session cluster's MPI Operator (whose leader election would give up). No MPI
controller, scheduler or kubelet runs here: the MPIJobs are only created, which is what this test is about.
The burst size is KESTREL_E2E_RESTART_COUNT (default 120 across 6 namespaces); bench/operator_scale.py
--restart-apiserver does the same in the middle of 1,000.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.conftest import _binaries, wait_until

COUNT = int(os.environ.get("KESTREL_E2E_RESTART_COUNT", "120"))
NAMESPACES = 6


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[cl.ControlPlane]:
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-e2e-restart-"))
    folder = cl.bin_dir()
    missing = [b for b in cl.API_ONLY_BINARIES if not os.access(folder / b, os.X_OK)]
    if missing or not (folder / cl.MPIJOB_CRD).is_file():
        _binaries()  # skips (or builds) with the suite's message
    cp = cl.start_api_only(folder, workdir)
    try:
        cl.apply_crds(cp, cl.mpijob_crd_paths(folder))
        cl.apply_crds(cp, cl.our_crd_paths())
        yield cp
    finally:
        cp.stop_all()
        sys.stderr.write(f"\n[e2e] restart test logs in {workdir}/logs\n")


def _burst(prefix: str, count: int) -> list[dict]:
    base = ko.example("train.yaml", "ClassificationTrain")
    return [ko.in_namespace(base, f"restart-{i % NAMESPACES}", f"{prefix}-{i:04d}") for i in range(count)]


def _mpijob_owners(cp: cl.ControlPlane) -> list[str]:
    jobs = cp.get_json("/apis/kubeflow.org/v2beta1/mpijobs")
    return [f"{j['metadata']['namespace']}/{ref['name']}" for j in jobs["items"]
            for ref in j["metadata"].get("ownerReferences", [])]


def test_apiserver_restart_in_a_burst_loses_nothing(own_cluster: cl.ControlPlane) -> None:
    cp = own_cluster
    for i in range(NAMESPACES):
        cp.kubectl("create", "namespace", f"restart-{i}")
    exe = Path(sys.executable).with_name("kestrel-operator")
    op = cl.Operator(cp=cp, argv=[str(exe), "run"],
                     env=cp.env(KESTREL_LOG_LEVEL="INFO", KESTREL_RESYNC_SECONDS="30", PYTHONUNBUFFERED="1"))
    op.start()
    try:
        before = _burst("before", COUNT // 2)
        cp.apply(before)
        # Restart while the operator works through the burst (its passes fail with connection refused and
        # are retried with backoff; its watches drop and reconnect).
        wait_until("first MPIJobs", lambda: len(_mpijob_owners(cp)) >= 5, timeout=120, interval=0.2)
        # From this (the main) thread: the components are started with PR_SET_PDEATHSIG, which fires when the
        # thread that started them ends, so a helper thread would take the new API server down with it.
        cl.restart_apiserver(cp, 3.0)
        after = _burst("after", COUNT - COUNT // 2)
        cp.apply(after)  # only the re-established watch can deliver these
        wanted = sorted(f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in before + after)
        wait_until(f"{len(wanted)} MPIJobs", lambda: len(set(_mpijob_owners(cp)) & set(wanted)) == len(wanted),
                   timeout=600, interval=2)
        owners = _mpijob_owners(cp)
        assert sorted(owners) == wanted, "a resource got no MPIJob or more than one"
        trains = cp.get_json("/apis/kestrel.dev/v1alpha1/classificationtrains")["items"]
        wait_until("every status written", lambda: all(
            (t.get("status") or {}).get("mpiJobName") for t in
            cp.get_json("/apis/kestrel.dev/v1alpha1/classificationtrains")["items"]), timeout=120, interval=2)
        assert len(trains) == len(wanted)
    finally:
        op.stop()
