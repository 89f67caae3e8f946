"""The GPU -> rank -> pod mapping rules, table-driven, through the full builder (what the MPIJob says)."""

from __future__ import annotations

import pytest

from kestrel_operator.manifests import map_gpus, plan_run
from kestrel_operator.resources import InvalidSpec, parse_resource
from tests.operator.conftest import TRAIN_SPEC, spec_with_parallelism, train_body

# gpus, numProcesses, gpusPerNode, model_parallelism -> slotsPerWorker, workers, GPUs per pod, launcher as worker
CASES = [
    ("1/1", 1, 1, 8, [], 1, 0, 1, True),
    ("8/8", 8, 8, 8, [], 8, 1, 8, False),
    ("8/4 two-way model parallel", 8, 4, 8, [0.5, 0.5], 4, 1, 8, False),
    ("16/16 over 2 nodes of 8", 16, 16, 8, [], 8, 2, 8, False),
    ("3/3 with gpusPerNode 2", 3, 3, 2, [], 1, 3, 1, False),
    ("4/2 two-way on 2-GPU nodes", 4, 2, 2, [0.6, 0.4], 1, 2, 2, False),
    ("12/12 on 8-GPU nodes", 12, 12, 8, [], 6, 2, 6, False),
]


def _job(plan):
    return next(o for o in plan.objects if o["kind"] == "MPIJob")


@pytest.mark.parametrize("label,gpus,procs,per_node,mp,slots,workers,per_pod,launcher_only", CASES,
                         ids=[c[0] for c in CASES])
def test_mapping_reaches_the_mpijob(settings, label, gpus, procs, per_node, mp, slots, workers, per_pod,
                                    launcher_only):
    body = train_body(gpus=gpus, numProcesses=procs, gpusPerNode=per_node,
                      experimentSpec=spec_with_parallelism(mp) if mp else TRAIN_SPEC)
    res = parse_resource(body, settings)
    plan = plan_run(res, res.run.experiment_spec)
    job = _job(plan)["spec"]
    assert job["slotsPerWorker"] == slots
    assert job["runLauncherAsWorker"] is launcher_only
    replicas = job["mpiReplicaSpecs"]
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    if launcher_only:
        assert "Worker" not in replicas
        assert launcher["resources"]["limits"]["nvidia.com/gpu"] == str(per_pod)
        assert launcher["command"] == ["kestrel"]
    else:
        assert replicas["Worker"]["replicas"] == workers
        worker = replicas["Worker"]["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(per_pod)
        assert "nvidia.com/gpu" not in str(launcher["resources"])
        # mpirun under the image's entrypoint, which turns the pod's SIGTERM into SIGUSR1 (forwarded to every rank)
        assert launcher["command"] == ["kestrel-worker"]
        assert launcher["args"][:5] == ["--child-signal", "SIGUSR1", "--", "mpirun", "-np"]
        assert launcher["args"][5] == str(procs)
        trainer = launcher["args"][launcher["args"].index("kestrel"):]
        assert trainer[trainer.index("--gpus") + 1] == str(gpus)
        assert trainer[trainer.index("--num_processes") + 1] == str(procs)
    # Every GPU is requested exactly once, and no pod asks for more than a node has.
    assert workers * per_pod + (per_pod if launcher_only else 0) == gpus
    assert per_pod <= per_node


def test_invalid_6_over_4(settings):
    body = train_body(gpus=6, numProcesses=4)
    with pytest.raises(InvalidSpec) as err:
        parse_resource(body, settings)
    assert err.value.fields == ["spec.numProcesses"]
    assert err.value.message == ("spec.numProcesses: Invalid value: 4: gpus must be a multiple of numProcesses: "
                                 "gpus 6, numProcesses 4")
    with pytest.raises(InvalidSpec, match="multiple of numProcesses"):
        map_gpus(6, 4, 8)


def test_model_parallelism_length_mismatch(settings):
    body = train_body(gpus=8, numProcesses=4, experimentSpec=spec_with_parallelism([0.3, 0.3, 0.4]))
    res = parse_resource(body, settings)
    with pytest.raises(InvalidSpec, match="model_parallelism needs 2 entries, got 3"):
        plan_run(res, res.run.experiment_spec)


def test_model_parallelism_missing_when_ranks_get_several_gpus(settings):
    res = parse_resource(train_body(gpus=8, numProcesses=4), settings)
    with pytest.raises(InvalidSpec, match="needs 2 entries, got 0"):
        plan_run(res, res.run.experiment_spec)


def test_model_parallelism_given_but_one_gpu_per_rank(settings):
    res = parse_resource(train_body(gpus=2, numProcesses=2, experimentSpec=spec_with_parallelism([0.5, 0.5])),
                         settings)
    with pytest.raises(InvalidSpec, match="each rank gets 1 GPU"):
        plan_run(res, res.run.experiment_spec)


def test_rank_wider_than_a_node():
    with pytest.raises(InvalidSpec, match="a node has 2"):
        map_gpus(4, 1, 2, [0.25] * 4)


def test_cpu_only_run():
    m = map_gpus(0, 1, 8)
    assert (m.ranks, m.gpus_per_pod, m.workers, m.launcher_as_worker) == (1, 0, 0, True)


def test_cpu_ranks_one_per_worker_pod(settings):
    """gpus 0 with numProcesses 2: two CPU ranks in two worker pods, mpirun in the launcher, no GPU asked."""
    res = parse_resource(train_body(gpus=0, numProcesses=2), settings)
    job = _job(plan_run(res, res.run.experiment_spec))["spec"]
    assert (job["slotsPerWorker"], job["runLauncherAsWorker"]) == (1, False)
    replicas = job["mpiReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == 2
    for role in ("Launcher", "Worker"):
        assert "nvidia.com/gpu" not in str(replicas[role]["template"]["spec"]["containers"][0]["resources"])
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["command"] == ["kestrel-worker"]
    assert launcher["args"][:6] == ["--child-signal", "SIGUSR1", "--", "mpirun", "-np", "2"]
    worker = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert [*worker["command"], *worker["args"]] == ["kestrel-worker", "--", "/usr/sbin/sshd", "-De", "-f",
                                                      "/home/kestrel/.sshd_config"]
    trainer = launcher["args"][launcher["args"].index("kestrel"):]
    assert trainer[trainer.index("--num_processes") + 1] == "2"
