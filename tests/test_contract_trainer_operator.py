"""The trainer <-> operator contract (kestrel_trainer/spec/contract.py) is the only place either side names it.

- No KESTREL_* variable name appears as a string in both packages, and none of the contract's names appears
  outside the contract module: a name one side writes and the other reads must come from the contract.
- The pods the operator renders carry exactly the contract's variables, mpirun forwards them to every rank,
  and the trainer reading them back finds the resource the operator rendered (its status path), which the
  run's Role lets it get and patch.
- What the trainer patches into status.progress is what the CRD declares and what the operator keeps.
- The trainer's error line is the one the operator picks out of a launcher's log.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from kestrel_operator.manifests import plan_run
from kestrel_operator.resources import parse_resource
from kestrel_operator.resources.crd import crd
from kestrel_operator.settings import Settings
from kestrel_operator.status.progress import progress_for_run
from kestrel_operator.status.trainer_error import error_line as operator_reads
from kestrel_trainer.report.cluster_status import ClusterStatusReporter
from kestrel_trainer.spec import contract
from tests.conftest import REPO
from tests.operator.conftest import train_body

PACKAGES = {"trainer": REPO / "trainer_image" / "kestrel_trainer", "operator": REPO / "operator" / "kestrel_operator"}
CONTRACT = Path(contract.__file__).resolve()
NAME = re.compile(r"KESTREL_[A-Z0-9_]+")
SETTINGS = Settings(default_image="kestrel-trainer:test", gpus_per_node=8)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def env_names_used() -> dict[str, dict[str, list[str]]]:
    """package -> KESTREL_ name -> where: string constants that are exactly a name (docstrings and prose that
    mentions a name inside a sentence are not uses), outside the contract module."""
    used: dict[str, dict[str, list[str]]] = {side: defaultdict(list) for side in PACKAGES}
    for side, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            if path.resolve() == CONTRACT or path.name.endswith("_pb2.py"):
                continue
            tree = ast.parse(path.read_text(), str(path))
            skip = _docstrings(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                        and NAME.fullmatch(node.value.partition("=")[0])):
                    used[side][node.value.partition("=")[0]].append(f"{path.relative_to(REPO)}:{node.lineno}")
    return used


def test_no_contract_name_is_spelled_outside_the_contract_and_none_is_shared_without_it():
    used = env_names_used()
    spelled = {name: where for side in used.values() for name, where in side.items()
               if name in contract.TRAINER_ENV}
    assert spelled == {}, "import these from kestrel_trainer.spec.contract"
    shared = set(used["trainer"]) & set(used["operator"])
    assert shared == set(), f"both sides use {sorted(shared)}: define them in kestrel_trainer/spec/contract.py"
    # The scan sees the names each side keeps for itself (else it would prove nothing).
    assert "KESTREL_LAUNCHER" in used["trainer"] and "KESTREL_GPUS_PER_NODE" in used["operator"]


def _launcher(body: dict) -> tuple[dict, dict]:
    plan = plan_run(parse_resource(body, SETTINGS), body["spec"].get("experimentSpec"))
    job = next(o for o in plan.objects if o["kind"] == "MPIJob")
    role = next(o for o in plan.objects if o["kind"] == "Role")
    return job, role


def test_pods_carry_the_contracts_variables_and_the_trainer_finds_its_resource_with_them():
    body = train_body(name="r18", gpus=4, numProcesses=4)
    body["metadata"]["uid"] = "uid-1"
    job, role = _launcher(body)
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in launcher["env"]}
    assert [n for n in env if n.startswith("KESTREL_")] == list(contract.TRAINER_ENV)
    forwarded = [launcher["args"][i + 1] for i, a in enumerate(launcher["args"]) if a == "-x"]
    assert set(contract.TRAINER_ENV) | set(contract.API_ENV) <= set(forwarded)

    # The trainer's rank 0 reads the values the operator wrote (the key comes from the Secret).
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    reporter = ClusterStatusReporter.from_env(values)
    assert reporter is not None
    assert reporter.path == "/apis/kestrel.dev/v1alpha1/namespaces/default/classificationtrains/r18/status"
    assert (reporter.uid, reporter.run) == ("uid-1", job["metadata"]["name"])
    # ... and the run's Role lets it do what the reporter does to that path.
    assert role["rules"] == [{"apiGroups": ["kestrel.dev"], "resources": ["classificationtrains/status"],
                              "resourceNames": ["r18"], "verbs": ["get", "patch"]}]
    assert tuple(role["rules"][0]["verbs"]) == contract.STATUS_VERBS


def test_progress_the_trainer_writes_is_what_the_crd_declares_and_the_operator_keeps():
    reporter = ClusterStatusReporter("kestrel.dev", "v1alpha1", "classificationtrains", "r18", "ml", run="r18-g2")
    progress = reporter.body(3, 30, 0.5, 0.8, float("inf"), 0.7, "epoch 3/30", percent=10, eta="4m10s")[
        "status"]["progress"]
    evaluation = contract.evaluation_patch(0.9, 0.99, 3, reporter.run, "2030-01-02T03:04:05Z")["status"]["progress"]
    schema = crd("ClassificationTrain")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    declared = schema["properties"]["status"]["properties"]["progress"]["properties"]
    assert list(declared) == list(contract.PROGRESS_FIELDS)
    tracker = contract.tracker_patch("http://mlflow:5000/#/experiments/1/runs/abc", reporter.run,
                                     "2030-01-02T03:04:05Z")["status"]["progress"]
    # Training reports every field but the evaluation's and the tracker's; `train --evaluate` then adds the
    # evaluation's, and a run with MLFLOW_TRACKING_URI its tracker run once at the start (each with run and time).
    shared = {contract.PROGRESS_RUN, contract.PROGRESS_UPDATE_TIME}
    assert list(progress) == [f for f in declared if f not in (set(evaluation) | set(tracker)) - shared]
    assert list(evaluation) == [contract.PROGRESS_TOP1, contract.PROGRESS_TOPK, contract.PROGRESS_TOP_K_VALUE,
                                contract.PROGRESS_RUN, contract.PROGRESS_UPDATE_TIME]
    assert list(tracker) == [contract.PROGRESS_TRACKER_RUN, contract.PROGRESS_RUN, contract.PROGRESS_UPDATE_TIME]
    assert set(progress) | set(evaluation) | set(tracker) == set(declared)
    assert progress_for_run(tracker, "r18-g2") == tracker
    assert (contract.PROGRESS_PERCENT, contract.PROGRESS_ETA) == ("percent", "eta")
    assert (contract.PROGRESS_TOP1, contract.PROGRESS_TOPK, contract.PROGRESS_TOP_K_VALUE) == (
        "top1Accuracy", "topKAccuracy", "topK")
    for fields in (progress, evaluation, tracker):  # each value has its declared type
        for name, value in fields.items():
            kind = {"integer": int, "number": float, "string": str}[declared[name]["type"]]
            assert value is None or isinstance(value, kind), name
    assert progress["valLoss"] is None and progress["epoch"] == 3  # JSON has no inf
    assert (progress["percent"], progress["eta"]) == (10, "4m10s")
    assert progress_for_run(progress, "r18-g2") == progress
    assert progress_for_run(evaluation, "r18-g2") == evaluation
    assert progress_for_run(progress, "r18-g3") is None  # a superseded run's report is dropped
    columns = {c["name"]: c["jsonPath"] for c in crd("ClassificationTrain")["spec"]["versions"][0][
        "additionalPrinterColumns"]}
    assert columns["Epoch"] == ".status.progress.epoch" and columns["Val Acc"] == ".status.progress.valAccuracy"


def test_the_trainers_error_line_is_what_the_operator_reads_from_the_launcher_log(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e",
                           str(tmp_path / "missing.txt"), "-r", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("kestrel train: error: ") or line.startswith("kestrel: error: "), proc.stderr
    log_tail = f"Epoch 1 starting\n{line}\n-----\nmpirun detected that one or more processes exited\n"
    assert operator_reads(log_tail) == line


def test_a_results_folder_the_trainer_cannot_create_is_its_one_error_line(tmp_path):
    """A fresh volume the trainer's user cannot write (root-owned hostPath/NFS; here: a path under a file, which
    fails for root too): exit 2 and one line naming the folder and the way out, which the operator quotes."""
    from tests.conftest import import_fashion_subset
    from tests.train.conftest import write_spec

    data = import_fashion_subset(tmp_path / "fm", per_class=2)
    spec = write_spec(tmp_path, data, epochs=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    results = blocker / "runs" / "0123"
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("kestrel: error: ") or line.startswith("kestrel train: error: "), proc.stderr[-2000:]
    assert f"-r/--results_dir {results}: cannot create" in line and "fixOwnership" in line, line
    assert "Traceback" not in proc.stderr
    assert operator_reads(f"{line}\n-----\nmpirun detected that one or more processes exited\n") == line


def test_the_trainers_stop_line_is_what_the_operator_reads_as_a_stop():
    """The trainer writes its graceful stop with contract.stopped_message; the operator recognises it with
    contract.STOPPED_MESSAGE (whatever mpirun's exit code): the two must stay one rule."""
    checkpoint = "/results/runs/ab/weights/resnet_002_step000007.tlt"
    for reason in ("signal 15", "signal 10 on rank 3"):
        line = f"kestrel train: error: {contract.stopped_message(reason, checkpoint)}"
        assert operator_reads(f"{line}\n-----\nORTE has lost communication with a remote daemon.\n") == line
        assert contract.STOPPED_MESSAGE.search(line), line
    assert not contract.STOPPED_MESSAGE.search("kestrel: error: dataset folder not found: /data/train")
