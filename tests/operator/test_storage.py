"""spec.storage (object storage, no PVC): the translation into the MPIJob, the run folder as an s3:// URL, the
upstream model found in the bucket, and one-line errors naming the field (docs/storage.md, "In the cluster")."""

from __future__ import annotations

import json

import pytest
import yaml

from kestrel_operator.manifests.outputs import OutputLocation
from kestrel_operator.manifests.runs import run_relative_dir
from kestrel_operator.resources import parse_resource
from kestrel_operator.resources.crd import crd
from kestrel_operator.resources.errors import InvalidSpec
from tests.operator.conftest import TRAIN_SPEC, export_body, prune_body, train_body
from tests.operator.test_manifests import assert_valid, by_kind, plan_for, templates

# A value that must appear nowhere in what the operator renders: the tests put it only in a "Secret" the
# operator never reads (the operator only names the Secret).
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
S3_SPEC = TRAIN_SPEC.replace('"/data/train"', '"s3://datasets/fashion/train"').replace(
    '"/data/val"', '"s3://datasets/fashion/val"')
STORAGE = {"s3": {"endpoint": "http://10.250.0.2:7070", "region": "us-east-1",
                  "secretRef": {"name": "s3-credentials"}},
           "resultsPath": "s3://runs/fashion"}


def s3_train(**spec):
    body = train_body(experimentSpec=S3_SPEC, storage=STORAGE, **spec)
    body["spec"].pop("volumes")
    return body


def s3_prune(**spec):
    body = prune_body(storage=STORAGE, **spec)
    body["spec"].pop("volumes")
    return body


def s3_export(**spec):
    body = export_body(storage=STORAGE, **spec)
    body["spec"].pop("volumes")
    return body


def launcher_of(plan):
    job = by_kind(plan, "MPIJob")[0]
    return job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]


def test_no_pvc_train_reads_credentials_from_the_secret_and_forwards_them_by_name(settings):
    plan = plan_for(s3_train(gpus=0, numProcesses=2), settings)
    assert_valid(plan)
    job = by_kind(plan, "MPIJob")[0]
    launcher = launcher_of(plan)
    env = {e["name"]: e for e in launcher["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-credentials",
                                                                       "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-credentials",
                                                                           "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://10.250.0.2:7070"
    assert env["AWS_REGION"]["value"] == "us-east-1"
    cache = env["KESTREL_CACHE_DIR"]["value"]
    args = launcher["args"]
    # mpirun forwards each by name: ranks started by orted over ssh inherit nothing of the pod's environment
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION",
                 "KESTREL_CACHE_DIR"):
        assert args[args.index(name) - 1] == "-x", name
    assert not any(a.startswith("AWS_") and "=" in a for a in args)
    # no PVC anywhere; the cache is an emptyDir mounted where KESTREL_CACHE_DIR points, on every pod
    for template in templates(job):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert not any("persistentVolumeClaim" in v for v in volumes.values())
        mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == cache)
        assert "emptyDir" in volumes[mount["name"]]
    # the run folder is in the bucket
    run_url = f"s3://runs/fashion/{run_relative_dir(plan.resource.meta.run_hash)}"
    assert args[args.index("-r") + 1] == run_url
    assert plan.output.path == f"{run_url}/weights/resnet_012.tlt"
    assert plan.output.to_status() == {"relativePath": f"{run_relative_dir(plan.resource.meta.run_hash)}"
                                                       "/weights/resnet_012.tlt"}


def test_no_secret_value_anywhere_in_the_rendered_objects(settings):
    """The operator never reads the Secret: nothing it renders can hold a key. Checked on the whole plan's text
    with a Secret-shaped manifest beside the resource, the way a GitOps repo keeps them."""
    plan = plan_for(s3_train(gpus=0, numProcesses=2), settings)
    text = json.dumps(plan.objects) + yaml.safe_dump_all(plan.objects)
    assert "s3-credentials" in text  # named ...
    assert SECRET_VALUE not in text and "stringData" not in text  # ... never copied
    assert '"kind": "Secret"' not in text


def test_single_rank_gets_the_same_environment_without_mpirun(settings):
    plan = plan_for(s3_train(gpus=0), settings)
    launcher = launcher_of(plan)
    assert launcher["command"] == ["kestrel"]
    names = [e["name"] for e in launcher["env"]]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KESTREL_CACHE_DIR"} <= set(names)


def test_ca_bundle_is_mounted_from_its_configmap(settings):
    storage = {**STORAGE, "s3": {**STORAGE["s3"], "caBundle": {"name": "corp-ca"}}}
    body = s3_train(gpus=0, numProcesses=2)
    body["spec"]["storage"] = storage
    plan = plan_for(body, settings)
    assert_valid(plan)
    launcher = launcher_of(plan)
    env = {e["name"]: e for e in launcher["env"]}
    bundle = env["AWS_CA_BUNDLE"]["value"]
    for template in templates(by_kind(plan, "MPIJob")[0]):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"]
                     if bundle.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        cm = volumes[mount["name"]]["configMap"]
        assert cm["name"] == "corp-ca" and cm["items"] == [{"key": "ca.crt", "path": bundle.rsplit("/", 1)[1]}]


def test_prune_from_train_reads_the_promoted_model_in_the_bucket_and_writes_its_run_folder_there(settings):
    train = plan_for(s3_train(gpus=0), settings)
    record = {"runHash": train.resource.meta.run_hash, "outputPath": train.output.path,
              "output": train.output.to_status()}
    upstream = OutputLocation.from_record(record)
    assert upstream is not None and upstream.path == train.output.path
    plan = plan_for(s3_prune(), settings, upstream=upstream)
    assert_valid(plan)
    cmd = [*launcher_of(plan)["command"], *launcher_of(plan).get("args", [])]
    assert cmd[cmd.index("-m") + 1] == train.output.path
    run_url = f"s3://runs/fashion/{run_relative_dir(plan.resource.meta.run_hash)}"
    assert cmd[cmd.index("-o") + 1] == f"{run_url}/pruned/pruned.tlt"
    job = by_kind(plan, "MPIJob")[0]
    assert not any("persistentVolumeClaim" in v for t in templates(job) for v in t["spec"]["volumes"])
    # ... and an export from that prune reads the pruned model from the bucket
    export = plan_for(s3_export(model={"fromPrune": "pruned"}), settings, upstream=OutputLocation.from_record(
        {"runHash": plan.resource.meta.run_hash, "outputPath": plan.output.path, "output": plan.output.to_status()}))
    ecmd = [*launcher_of(export)["command"], *launcher_of(export).get("args", [])]
    assert ecmd[ecmd.index("-m") + 1] == plan.output.path
    assert ecmd[ecmd.index("-o") + 1].startswith("s3://runs/fashion/runs/")


def test_an_upstream_in_the_bucket_needs_storage_on_the_consumer(settings):
    upstream = OutputLocation("", "", "runs/0123456789abcdef/weights/resnet_012.tlt",
                              "s3://runs/fashion/runs/0123456789abcdef/weights/resnet_012.tlt", "0123456789abcdef")
    with pytest.raises(InvalidSpec) as err:
        plan_for(prune_body(), settings, upstream=upstream)
    assert err.value.field == "spec.model" and "spec.storage" in err.value.message


def messages(body, settings):
    try:
        parse_resource(body, settings)
    except InvalidSpec as err:
        return err.message
    return ""


@pytest.mark.parametrize("change,field", [
    ({"storage": {**STORAGE, "resultsPath": "s3://Bad_Bucket/x"}}, "spec.storage.resultsPath"),
    ({"storage": {**STORAGE, "resultsPath": "/results"}}, "spec.storage.resultsPath"),
    ({"storage": {**STORAGE, "resultsPath": "s3://runs/a/../b"}}, "spec.storage.resultsPath"),
    ({"storage": {**STORAGE, "s3": {**STORAGE["s3"], "endpoint": "ftp://host"}}}, "spec.storage.s3.endpoint"),
    ({"storage": {**STORAGE, "s3": {"endpoint": "http://h:1"}}}, "spec.storage.s3.secretRef"),
    ({"storage": {"resultsPath": "s3://runs/x"}}, "spec.storage.s3"),
    ({"storage": {**STORAGE, "s3": {**STORAGE["s3"], "secretRef": {"name": "Not_A_Name"}}}},
     "spec.storage.s3.secretRef.name"),
])
def test_bad_storage_is_one_line_naming_the_field(settings, change, field):
    body = s3_train()
    body["spec"].update(change)
    message = messages(body, settings)
    assert message.startswith(field + ":"), message
    assert "\n" not in message and "Traceback" not in message


def test_results_location_rules(settings):
    both = train_body(experimentSpec=S3_SPEC, storage=STORAGE)
    assert "exactly one of volumes.results (a PVC) or storage.resultsPath" in messages(both, settings)
    neither = train_body()
    neither["spec"].pop("volumes")
    assert "volumes.data is required unless storage is set" in messages(neither, settings)
    # data from the bucket, results on a PVC: storage without resultsPath
    mixed = train_body(experimentSpec=S3_SPEC, storage={"s3": STORAGE["s3"]},
                       volumes={"results": {"claimName": "results"}})
    res = parse_resource(mixed, settings)
    assert res.run.results is not None and res.run.results_url is None and res.run.results_root == "/results"
    # an s3 URL elsewhere without storage is refused with its field
    no_storage = prune_body(model={"path": "s3://runs/m.tlt"})
    assert messages(no_storage, settings).startswith("spec.model.path:")
    # outputPath must be in the bucket's results location
    outside = s3_prune(outputPath="s3://other/pruned.tlt")
    assert messages(outside, settings).startswith("spec.outputPath:")
    # spec.env may not set what spec.storage sets
    env = s3_train(env=[{"name": "AWS_ENDPOINT_URL", "value": "http://elsewhere"}])
    assert "set by the operator from spec.storage" in messages(env, settings)


def test_the_crd_accepts_storage_and_s3_paths():
    spec = crd("ClassificationExport")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "volumes" not in spec["required"]
    assert spec["properties"]["storage"]["properties"]["s3"]["required"] == ["secretRef"]
    import re
    assert re.match(spec["properties"]["outputPath"]["pattern"], "s3://runs/x.etlt")
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("storage.resultsPath" in r for r in rules)


def test_the_s3_example_renders_with_no_pvc_and_names_only_the_secret(settings):
    from tests.operator.conftest import load_example

    (body,) = load_example("train-s3.yaml")
    body["metadata"]["namespace"] = "default"
    plan = plan_for(body, settings)
    assert_valid(plan)
    job = by_kind(plan, "MPIJob")[0]
    assert not any("persistentVolumeClaim" in v for t in templates(job) for v in t["spec"]["volumes"])
    assert plan.output.path.startswith("s3://kestrel-runs/fashion/runs/")
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in launcher_of(plan)["env"]
            if e["name"].startswith("AWS_") and "valueFrom" in e]
    assert refs == ["s3-credentials"] * 3
