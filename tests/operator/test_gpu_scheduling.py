"""GPU runs (issue 31 items 3-4): the image by the run's GPUs, the GPU resource name (MIG, time-sliced), the GPU
node tolerations, and the InfiniBand/RoCE opt-in (hostNetwork, IPC_LOCK, NCCL_* through mpirun, mpirun's
transport). Expected values are written out by hand from core/v1 PodSpec/SecurityContext, the NVIDIA device
plugin's resource names (nvidia.com/gpu, nvidia.com/mig-<profile>) and Open MPI's mpirun flags; each rendered
MPIJob is also checked against the MPIJob and core/v1 schemas (assert_valid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kestrel_operator.resources import InvalidSpec, parse_resource
from kestrel_operator.resources.crd import crd
from kestrel_operator.settings import Settings, SettingsError, from_env
from kestrel_trainer.spec.contract import REQUIRE_GPUS_ENV
from tests.operator.conftest import export_body, train_body
from tests.operator.test_manifests import assert_valid, by_kind, plan_for

REPO = Path(__file__).resolve().parents[2]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
IB = {"hostNetwork": True, "ipcLock": True, "nccl": {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME": "ib0"}}


@pytest.fixture
def gpu_settings() -> Settings:
    return Settings(default_image="kestrel-trainer:test", gpu_image="kestrel-trainer-gpu:test", gpus_per_node=8,
                    gpu_tolerations=(GPU_TOLERATION,))


def _job(body, settings):
    plan = plan_for(body, settings)
    assert_valid(plan)
    return by_kind(plan, "MPIJob")[0]


def _pod(job, role):
    return job["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]


def test_a_gpu_run_gets_the_gpu_image_a_cpu_run_the_cpu_image_and_spec_image_wins(gpu_settings):
    for gpus, image in ((1, "kestrel-trainer-gpu:test"), (8, "kestrel-trainer-gpu:test"), (0, "kestrel-trainer:test")):
        job = _job(train_body(gpus=gpus), gpu_settings)
        for role in job["spec"]["mpiReplicaSpecs"]:
            assert _pod(job, role)["containers"][0]["image"] == image, (gpus, role)
    job = _job(train_body(gpus=4, image="registry.example/mine:1"), gpu_settings)
    images = {_pod(job, r)["containers"][0]["image"] for r in job["spec"]["mpiReplicaSpecs"]}
    assert images == {"registry.example/mine:1"}
    # pruning defaults to gpus 0: the CPU image
    assert parse_resource(export_body(), gpu_settings).run.image == "kestrel-trainer:test"


def test_the_launcher_tells_the_trainer_how_many_gpus_the_run_asked_for(gpu_settings):
    for gpus in (0, 1):
        env = _pod(_job(train_body(gpus=gpus), gpu_settings), "Launcher")["containers"][0]["env"]
        assert {"name": REQUIRE_GPUS_ENV, "value": str(gpus)} in env


def test_a_mig_resource_name_is_requested_with_the_count_of_the_mapping(gpu_settings):
    job = _job(train_body(gpus=8, numProcesses=8, gpusPerNode=4, gpuResource="nvidia.com/mig-1g.10gb"), gpu_settings)
    worker = _pod(job, "Worker")
    # 8 ranks of 1 GPU, 4 per node: 4 slots per worker, 2 workers of 4 (the mapping counts, whatever the name)
    assert job["spec"]["slotsPerWorker"] == 4
    assert job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "4"
    assert "nvidia.com/gpu" not in worker["containers"][0]["resources"]["limits"]
    launcher = _pod(job, "Launcher")["containers"][0]
    assert not any("nvidia.com" in k for k in launcher["resources"].get("limits", {}))
    # a single-rank run: the launcher holds the GPU under the same name
    one = _pod(_job(train_body(gpus=1, gpuResource="nvidia.com/gpu.shared"), gpu_settings), "Launcher")
    assert one["containers"][0]["resources"]["limits"]["nvidia.com/gpu.shared"] == "1"
    # the operator's default name (chart trainer.gpuResource)
    mig = Settings(default_image="c", gpu_image="g", gpu_resource="nvidia.com/mig-3g.40gb")
    limits = _pod(_job(train_body(gpus=1), mig), "Launcher")["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.40gb"] == "1" and "nvidia.com/gpu" not in limits


def test_gpu_runs_tolerate_the_gpu_taint_cpu_runs_do_not(gpu_settings):
    job = _job(train_body(gpus=4), gpu_settings)
    for role in job["spec"]["mpiReplicaSpecs"]:
        assert GPU_TOLERATION in _pod(job, role)["tolerations"], role
    cpu = _job(train_body(gpus=0, numProcesses=2), gpu_settings)
    for role in cpu["spec"]["mpiReplicaSpecs"]:
        assert GPU_TOLERATION not in _pod(cpu, role).get("tolerations", []), role
    # the user's own toleration of that taint (key, effect) replaces the default
    mine = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}
    tolerations = _pod(_job(train_body(gpus=1, tolerations=[mine]), gpu_settings), "Launcher")["tolerations"]
    assert mine in tolerations and GPU_TOLERATION not in tolerations


def test_the_infiniband_opt_in_field_by_field(gpu_settings):
    job = _job(train_body(gpus=16, numProcesses=16, network=IB), gpu_settings)
    worker, launcher = _pod(job, "Worker"), _pod(job, "Launcher")
    assert worker["hostNetwork"] is True and worker["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert worker["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}
    env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5_0,mlx5_1" and env["NCCL_SOCKET_IFNAME"] == "ib0"
    # the launcher only runs mpirun: pod network, no capability
    assert "hostNetwork" not in launcher and "dnsPolicy" not in launcher
    assert launcher["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    args = launcher["containers"][0]["args"]
    for name in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME"):
        assert args[args.index(name) - 1] == "-x", name
    # mpirun no longer pins its own traffic to TCP (Open MPI picks UCX/verbs where it can)
    assert "^openib" not in args and "ob1" not in args
    # without the opt-in: pod network, no capability, TCP pinned as before
    plain = _job(train_body(gpus=16, numProcesses=16), gpu_settings)
    pw = _pod(plain, "Worker")
    assert "hostNetwork" not in pw and pw["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    plain_args = _pod(plain, "Launcher")["containers"][0]["args"]
    i = plain_args.index("btl")
    assert plain_args[i - 1:i + 2] == ["-mca", "btl", "^openib"] and "ob1" in plain_args


def test_a_single_rank_run_with_the_opt_in_puts_it_on_the_launcher(gpu_settings):
    pod = _pod(_job(train_body(gpus=1, network={"ipcLock": True, "hostNetwork": True}), gpu_settings), "Launcher")
    assert pod["hostNetwork"] is True and pod["containers"][0]["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]


@pytest.mark.parametrize("spec, message", [
    ({"gpuResource": "gpu"}, "spec.gpuResource: Invalid value: \"gpu\": not an extended resource name"),
    ({"gpuResource": "kubernetes.io/gpu"}, "spec.gpuResource: Invalid value"),
    ({"gpuResource": "nvidia.com/mig-1g.10gb", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}},
     "spec.resources.limits: Invalid value: \"nvidia.com/mig-1g.10gb\": nvidia.com/mig-1g.10gb is set by the "
     "operator from spec.gpus"),
    ({"network": {"nccl": {"HTTPS_PROXY": "x"}}},
     "spec.network.nccl: Invalid value: \"HTTPS_PROXY\": takes NCCL_* variables only"),
    ({"network": {"nccl": {"NCCL_DEBUG": "WARN"}}, "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
     "NCCL_DEBUG is also in spec.env"),
    ({"network": {"ipcLock": "yes"}}, "spec.network.ipcLock: Invalid value: \"yes\": must be true or false"),
])
def test_bad_gpu_scheduling_fields_are_refused_with_the_field(gpu_settings, spec, message):
    with pytest.raises(InvalidSpec) as err:
        parse_resource(train_body(**spec), gpu_settings)
    assert message in str(err.value)


def test_the_crd_schema_carries_the_fields_with_the_settings_pattern():
    import re

    props = crd("ClassificationTrain")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]
    pattern = re.compile(props["gpuResource"]["pattern"])
    for ok in ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared", "amd.com/gpu"):
        assert pattern.match(ok), ok
    for bad in ("gpu", "nvidia.com/", "/gpu", "Nvidia.com/gpu"):
        assert not pattern.match(bad), bad
    net = props["network"]["properties"]
    assert net["hostNetwork"]["type"] == net["ipcLock"]["type"] == "boolean"
    assert net["nccl"]["additionalProperties"] == {"type": "string", "maxLength": 4096}


def test_settings_and_the_charts_defaults():
    values = yaml.safe_load((REPO / "charts" / "kestrel" / "values.yaml").read_text())["trainer"]
    assert values["gpuTolerations"] == [GPU_TOLERATION]
    s = from_env({"KESTREL_GPU_IMAGE": "localhost/kestrel-trainer-gpu:0.1.0", "KESTREL_GPU_RESOURCE": values[
        "gpuResource"], "KESTREL_GPU_TOLERATIONS": json.dumps(values["gpuTolerations"])})
    assert (s.gpu_image, s.gpu_resource, s.gpu_tolerations) == (
        "localhost/kestrel-trainer-gpu:0.1.0", "nvidia.com/gpu", (GPU_TOLERATION,))
    assert from_env({}).gpu_tolerations == () and from_env({}).gpu_image == "kestrel-trainer-gpu:0.1.0"
    with pytest.raises(SettingsError, match="^KESTREL_GPU_RESOURCE='gpu' is not an extended resource name"):
        from_env({"KESTREL_GPU_RESOURCE": "gpu"})
    with pytest.raises(SettingsError, match="^KESTREL_GPU_TOLERATIONS is not JSON"):
        from_env({"KESTREL_GPU_TOLERATIONS": "nvidia.com/gpu:NoSchedule"})
    with pytest.raises(SettingsError, match="^KESTREL_GPU_TOLERATIONS must be a JSON list of tolerations"):
        from_env({"KESTREL_GPU_TOLERATIONS": '[{"taint": "x"}]'})
    template = (REPO / "charts" / "kestrel" / "templates" / "deployment.yaml").read_text()
    for name in ("KESTREL_GPU_IMAGE", "KESTREL_GPU_RESOURCE", "KESTREL_GPU_TOLERATIONS"):
        assert f"name: {name}" in template
