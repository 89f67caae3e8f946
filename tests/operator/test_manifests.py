"""What the builders produce: shapes per kind, volumes, security, the key, names; and validity of every
object against the MPI Operator v0.8.0's own MPIJob CRD schema and the Kubernetes client's core models."""

from __future__ import annotations

import pytest
import yaml

from kestrel_operator.manifests import plan_run
from kestrel_operator.manifests.names import mpijob_name
from kestrel_operator.manifests.outputs import OutputLocation
from kestrel_operator.resources import parse_resource
from kestrel_operator.settings import Settings
from tests.operator.conftest import TRAIN_SPEC, UPSTREAM_MPIJOB_CRD, export_body, prune_body, train_body
from tests.operator.k8s_schema import check_core, validate

MPIJOB_SCHEMA = yaml.safe_load(UPSTREAM_MPIJOB_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
CORE_MODELS = {"ServiceAccount": "V1ServiceAccount", "ConfigMap": "V1ConfigMap", "Role": "V1Role",
               "RoleBinding": "V1RoleBinding", "PodDisruptionBudget": "V1PodDisruptionBudget"}
UPSTREAM = OutputLocation("results", "resnet18", "weights/resnet_012.tlt", "/results/weights/resnet_012.tlt")


def plan_for(body, settings, upstream=UPSTREAM):
    res = parse_resource(body, settings)
    text = res.run.experiment_spec
    return plan_run(res, text, upstream if getattr(res, "model", None) or getattr(res, "pretrained_model", None)
                    else None)


def by_kind(plan, kind):
    return [o for o in plan.objects if o["kind"] == kind]


def templates(job):
    return [spec["template"] for spec in job["spec"]["mpiReplicaSpecs"].values()]


def assert_valid(plan):
    for obj in plan.objects:
        if obj["kind"] == "MPIJob":
            assert validate(obj, MPIJOB_SCHEMA) == []
            for template in templates(obj):
                assert check_core(template, "V1PodTemplateSpec") == []
        else:
            assert check_core(obj, CORE_MODELS[obj["kind"]]) == []


BODIES = {
    "train-1gpu": lambda: train_body(),
    "train-16gpu": lambda: train_body(gpus=16, resources={"requests": {"cpu": "8", "memory": "32Gi"}},
                                      nodeSelector={"gpu": "a100"},
                                      tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}],
                                      priorityClassName="training", imagePullSecrets=[{"name": "regcred"}],
                                      useAmp=True, initEpoch=5, shmSize="8Gi", activeDeadlineSeconds=86400),
    "retrain-from-prune": lambda: train_body(pretrainedModel={"fromPrune": "pruned"}),
    "prune": lambda: prune_body(excludedLayers=["conv1", "predictions"]),
    "export-int8": lambda: export_body(dataType="int8", genDsConfig=True,
                                       calibration={"imageDir": "/data/cal", "batches": 10, "batchSize": 8},
                                       volumes={"data": {"claimName": "datasets"},
                                                "results": {"claimName": "results"}}),
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_object_validates(settings, name):
    assert_valid(plan_for(BODIES[name](), settings))


def test_train_objects_and_ownership(settings):
    body = train_body()
    body["metadata"].update(uid="u-123", generation=3)
    plan = plan_for(body, settings)
    assert [o["kind"] for o in plan.objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                                                 "PodDisruptionBudget", "MPIJob"]
    for obj in plan.objects:
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "kestrel.dev/v1alpha1", "kind": "ClassificationTrain", "name": "resnet18",
                       "uid": "u-123", "controller": True, "blockOwnerDeletion": True}
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kestrel-operator"
        assert labels["kestrel.dev/classificationtrain"] == "resnet18"
    job = by_kind(plan, "MPIJob")[0]
    assert job["metadata"]["name"] == "resnet18-train-g3"
    assert job["metadata"]["labels"]["kestrel.dev/generation"] == "3"
    assert by_kind(plan, "ConfigMap")[0]["data"]["spec.txt"] == TRAIN_SPEC
    # The run's own folder, named by its 16-hex run hash (also labelled on the MPIJob).
    run = plan.resource.meta.run_hash
    assert len(run) == 16 and int(run, 16) >= 0
    assert job["metadata"]["labels"]["kestrel.dev/run-hash"] == run
    assert plan.output.path == f"/results/runs/{run}/weights/resnet_012.tlt"


def test_role_allows_only_this_resources_status(settings):
    plan = plan_for(train_body(), settings)
    role = by_kind(plan, "Role")[0]
    assert role["rules"] == [{"apiGroups": ["kestrel.dev"], "resources": ["classificationtrains/status"],
                              "resourceNames": ["resnet18"], "verbs": ["get", "patch"]}]
    binding = by_kind(plan, "RoleBinding")[0]
    sa = by_kind(plan, "ServiceAccount")[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]
    for t in templates(by_kind(plan, "MPIJob")[0]):
        assert t["spec"]["serviceAccountName"] == sa


def test_user_service_account_is_bound_not_created(settings):
    plan = plan_for(train_body(serviceAccountName="team-sa"), settings)
    assert not by_kind(plan, "ServiceAccount")
    assert by_kind(plan, "RoleBinding")[0]["subjects"][0]["name"] == "team-sa"


def test_key_only_from_secret_env_never_on_command_line(settings):
    plan = plan_for(train_body(gpus=16), settings)
    job = by_kind(plan, "MPIJob")[0]
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in launcher["env"]}
    assert env["KESTREL_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "kestrel-key", "key": "key"}}
    args = launcher["args"]
    assert args[args.index("KESTREL_KEY") - 1] == "-x"
    assert not any(a == "-k" or "--key" in a for a in args)
    for name in ("KESTREL_RESOURCE_GROUP", "KESTREL_RESOURCE_PLURAL", "KESTREL_RESOURCE_NAME",
                 "KESTREL_RESOURCE_NAMESPACE", "KESTREL_RESOURCE_UID", "KESTREL_RUN"):
        assert name in env and args[args.index(name) - 1] == "-x"
    # Ranks on the workers are started by sshd/orted and inherit none of the pod's variables: rank 0's
    # progress reporter finds the API server only if mpirun forwards where kubelet said it is.
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        assert args[args.index(name) - 1] == "-x"
    assert env["KESTREL_RESOURCE_PLURAL"]["value"] == "classificationtrains"
    assert env["KESTREL_RUN"]["value"] == job["metadata"]["name"]
    for flag in ("--bind-to", "-map-by", "ob1", "^openib", "NCCL_DEBUG=INFO", "LD_LIBRARY_PATH", "PATH"):
        assert flag in args
    assert "--allow-run-as-root" not in args


def test_pods_are_non_root_with_shm_data_results(settings):
    plan = plan_for(BODIES["train-16gpu"](), settings)
    for t in templates(by_kind(plan, "MPIJob")[0]):
        spec = t["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        c = spec["containers"][0]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/data"]["readOnly"] is True and mounts["/data"]["subPath"] == "fashion-mnist"
        assert "readOnly" not in mounts["/results"]
        assert mounts["/etc/kestrel/spec"]["readOnly"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
        assert spec["nodeSelector"] == {"gpu": "a100"}
        assert spec["priorityClassName"] == "training"


def test_volume_ownership_fsgroup_on_root_mismatch_and_the_opt_in_chown_of_the_results_folder(settings):
    """Every pod: fsGroup 1000 with OnRootMismatch (CSI volumes; no recursive walk when the root already has the
    group). spec.volumes.results.fixOwnership adds, to every pod, one init container that chowns only the mounted
    results folder (not recursive) as root with CHOWN/FOWNER/DAC_OVERRIDE and nothing else; off by default. With
    keepRuns' cleanup it runs first (the cleanup runs as the pods' user)."""
    off = by_kind(plan_for(train_body(gpus=16), settings), "MPIJob")[0]
    for t in templates(off):
        assert t["spec"]["securityContext"]["fsGroup"] == 1000
        assert t["spec"]["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        assert "initContainers" not in t["spec"]
    body = train_body(gpus=16, imagePullPolicy="IfNotPresent")
    body["spec"]["volumes"]["results"]["fixOwnership"] = True
    plan = plan_for(body, settings)
    assert_valid(plan)
    job = by_kind(plan, "MPIJob")[0]
    assert set(job["spec"]["mpiReplicaSpecs"]) == {"Launcher", "Worker"}
    for t in templates(job):
        (init,) = t["spec"]["initContainers"]
        assert init["command"] == ["chown", "1000:1000", "/results"]
        assert init["image"] == t["spec"]["containers"][0]["image"]
        assert init["imagePullPolicy"] == "IfNotPresent"
        assert init["volumeMounts"] == [{"name": "results", "mountPath": "/results", "subPath": "resnet18"}]
        sc = init["securityContext"]
        assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]}
        # the trainer itself stays non-root
        assert t["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True
    res = parse_resource(body, settings)
    launcher = plan_run(res, res.run.experiment_spec, remove=["/results/runs/0123456789ab"]).objects
    (job,) = [o for o in launcher if o["kind"] == "MPIJob"]
    inits = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["results-ownership", "remove-old-runs"]


def test_fix_ownership_must_be_a_boolean(settings):
    from kestrel_operator.resources.errors import InvalidSpec

    body = train_body()
    body["spec"]["volumes"]["results"]["fixOwnership"] = "yes"
    with pytest.raises(InvalidSpec, match=r"spec\.volumes\.results\.fixOwnership"):
        parse_resource(body, settings)


def test_every_trainer_pod_has_the_grace_period_for_a_checkpoint_and_ranks_run_under_the_entrypoint(settings):
    """A pod's SIGTERM reaches its ranks through the image's entrypoint (PID 1 of the workers and of a multi-rank
    launcher), and Kubernetes waits the chart's terminationGracePeriodSeconds (default 120 s, not its own 30 s) for
    the checkpoint before SIGKILL."""
    for body, roles in ((train_body(gpus=16), {"Launcher", "Worker"}), (train_body(gpus=1), {"Launcher"})):
        for grace, run_settings in ((120, settings), (600, Settings(termination_grace_seconds=600))):
            job = by_kind(plan_for(body, run_settings), "MPIJob")[0]
            replicas = job["spec"]["mpiReplicaSpecs"]
            assert set(replicas) == roles
            for role, replica in replicas.items():
                spec = replica["template"]["spec"]
                assert spec["terminationGracePeriodSeconds"] == grace, role
                command = spec["containers"][0]["command"]
                # one rank: the trainer itself is the launcher's PID 1 and checkpoints on SIGTERM
                assert command == (["kestrel"] if roles == {"Launcher"} else ["kestrel-worker"]), role


def test_train_command(settings):
    plan = plan_for(BODIES["train-16gpu"](), settings)
    args = by_kind(plan, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0][
        "args"]
    trainer = args[args.index("kestrel"):]
    run = plan.resource.meta.run_hash
    assert trainer == ["kestrel", "train", "-e", "/etc/kestrel/spec/spec.txt", "-r", f"/results/runs/{run}",
                       "--gpus", "16", "--num_processes", "16", "--use_amp", "--init_epoch", "5"]


def test_single_gpu_train_runs_trainer_directly(settings):
    plan = plan_for(train_body(), settings)
    c = by_kind(plan, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert [c["command"][0], *c["args"]] == ["kestrel", "train", "-e", "/etc/kestrel/spec/spec.txt", "-r",
                                             f"/results/runs/{plan.resource.meta.run_hash}"]


def test_prune_shape(settings):
    plan = plan_for(BODIES["prune"](), settings)
    assert [o["kind"] for o in plan.objects] == ["ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget",
                                                 "MPIJob"]
    job = by_kind(plan, "MPIJob")[0]["spec"]
    assert job["runLauncherAsWorker"] is True and "Worker" not in job["mpiReplicaSpecs"]
    c = job["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    run = plan.resource.meta.run_hash
    assert [c["command"][0], *c["args"]] == [
        "kestrel", "prune", "-m", "/kestrel/model-source/weights/resnet_012.tlt", "-o",
        f"/results/runs/{run}/pruned/pruned.tlt",
        "-n", "max", "-eq", "union", "-pg", "8", "-pth", "0.1", "-nf", "16", "-el", "conv1", "predictions"]
    assert "nvidia.com/gpu" not in str(c["resources"])  # CPU by default
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    source = mounts["/kestrel/model-source"]
    assert source["readOnly"] is True and source["subPath"] == "resnet18"
    # The upstream's results claim is the same PVC: one pod volume, two mounts.
    assert source["name"] == mounts["/results"]["name"]
    assert plan.output.relative_path == f"runs/{run}/pruned/pruned.tlt"


def test_export_shape(settings):
    plan = plan_for(BODIES["export-int8"](), settings)
    c = by_kind(plan, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert [c["command"][0], *c["args"]] == [
        "kestrel", "export", "-m", "/results/pruned.tlt", "-o",
        f"/results/runs/{plan.resource.meta.run_hash}/export/exported.etlt", "--data_type",
        "int8", "--gen_ds_config", "--cal_image_dir", "/data/cal", "--batches", "10", "--batch_size", "8"]


def test_retrain_points_spec_at_the_pruned_model(settings):
    plan = plan_for(BODIES["retrain-from-prune"](), settings)
    text = by_kind(plan, "ConfigMap")[0]["data"]["spec.txt"]
    assert 'pretrained_model_path: "/kestrel/model-source/weights/resnet_012.tlt"' in text
    assert text.startswith("# Written by kestrel-operator")
    from kestrel_trainer.spec import parse_spec_text

    assert parse_spec_text(text, task="train").train.pretrained_model_path.endswith("resnet_012.tlt")


def test_names_fit_dns_labels(settings):
    long_name = "a" * 60 + ".team.example"
    body = train_body(name=long_name)
    body["metadata"]["generation"] = 12345
    plan = plan_for(body, settings)
    job_name = by_kind(plan, "MPIJob")[0]["metadata"]["name"]
    assert len(job_name) <= 45 and job_name.endswith("-g12345") and "." not in job_name
    for obj in plan.objects:
        assert len(obj["metadata"]["name"]) <= 63
        assert all(len(v) <= 63 for v in obj["metadata"]["labels"].values())
    # Deterministic: the same resource always gets the same names.
    assert mpijob_name(parse_resource(body, settings).meta) == job_name


def test_a_running_gang_is_guarded_from_drains_and_rank_pods_have_requests_and_a_bounded_shm(settings):
    """What a cluster admin expects of every run: requests (not BestEffort), a bounded /dev/shm, and a
    PodDisruptionBudget covering every pod of the gang (a drain's eviction of any one would cost the attempt)."""
    plan = plan_for(train_body(gpus=16, numProcesses=16), settings)
    pdb = by_kind(plan, "PodDisruptionBudget")[0]
    job = by_kind(plan, "MPIJob")[0]
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
    assert pdb["metadata"]["name"] == job["metadata"]["name"] and pdb["spec"]["minAvailable"] == 1 + workers
    for t in templates(job):  # the selector picks exactly the run's pods: launcher and workers
        labels = t["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    shm = next(v for v in worker["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}

    # The user's own numbers win, a limit alone included (it is the request too); the operator's settings can turn
    # each default off.
    own = plan_for(train_body(resources={"limits": {"cpu": "4"}}, shmSize="16Gi"), settings)
    c = by_kind(own, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"limits": {"cpu": "4", "nvidia.com/gpu": "1"}, "requests": {"memory": "8Gi"}}
    bare = Settings(default_image="x", rank_requests={}, shm_size=None, disruption_budget=False)
    plain = plan_for(train_body(), bare)
    assert not by_kind(plain, "PodDisruptionBudget")
    spec = by_kind(plain, "MPIJob")[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    assert "requests" not in spec["containers"][0]["resources"]
    assert next(v for v in spec["volumes"] if v["name"] == "shm")["emptyDir"] == {"medium": "Memory"}
