"""`kestrel-operator render` (the GitOps preview) and the no-TensorFlow import guarantee."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml

from kestrel_operator.cli import main
from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.settings import Settings
from tests.operator.conftest import EXAMPLES, load_example
from tests.operator.fake_api import FakeApi


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_train_example(capsys):
    code, out, err = run_cli(capsys, "render", "-f", str(EXAMPLES / "train.yaml"))
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PodDisruptionBudget",
                                         "MPIJob"]
    assert "&id" not in out and "*id" not in out  # plain YAML, no anchors, diffable
    assert docs[-1]["spec"]["slotsPerWorker"] == 8


def test_render_gpus_per_node_flag(capsys):
    code, out, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "retrain.yaml"), "-f", str(EXAMPLES / "prune.yaml"),
                           "-f", str(EXAMPLES / "train.yaml"), "--gpus-per-node", "4")
    assert code == 0
    jobs = [d for d in yaml.safe_load_all(out) if d["kind"] == "MPIJob"]
    retrain = next(j for j in jobs if j["metadata"]["name"] == "resnet18-fashion-retrain-train-g1")
    assert retrain["spec"]["slotsPerWorker"] == 4 and retrain["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2


def test_render_is_what_the_operator_creates(capsys, tmp_path):
    """Same pure function: render's objects equal what the reconciler creates in the API store."""
    code, out, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "train.yaml"), "--gpus-per-node", "8")
    rendered = list(yaml.safe_load_all(out))
    api = FakeApi()
    doc = load_example("train.yaml")[0]
    doc["metadata"]["uid"] = ""
    api.put(doc)
    body = api.body("ClassificationTrain", "resnet18-fashion")
    body["metadata"]["uid"] = ""
    Reconciler(api, Settings(gpus_per_node=8)).reconcile(body)
    for obj in rendered:
        stored = api.body(obj["kind"], obj["metadata"]["name"])
        stored["metadata"].pop("uid"), stored["metadata"].pop("resourceVersion"), stored["metadata"].pop("generation")
        stored.pop("status", None)
        assert stored == obj


def test_render_invalid_spec_exit_2(capsys, tmp_path):
    doc = load_example("train.yaml")[0]
    doc["spec"]["experimentSpec"] = doc["spec"]["experimentSpec"].replace('arch: "resnet"', 'arch: "resnut"')
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 2 and out == ""
    assert err.startswith("kestrel-operator: InvalidSpec: ") and "resnut" in err
    assert "spec.experimentSpec:2: model_config.arch" in err


def test_render_missing_reference_exit_2(capsys):
    code, _, err = run_cli(capsys, "render", "-f", str(EXAMPLES / "prune.yaml"))
    assert code == 2 and "ClassificationTrain resnet18-fashion is not in the input" in err


def test_render_cross_field_error_exit_2(capsys, tmp_path):
    doc = load_example("train.yaml")[0]
    doc["spec"].update(gpus=6, numProcesses=4)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 2, err
    assert err == ("kestrel-operator: InvalidSpec: spec.numProcesses: Invalid value: 4: gpus must be a multiple of "
                   "numProcesses: gpus 6, numProcesses 4\n")


def test_render_lists_every_field_error_on_one_line(capsys, tmp_path):
    """Three independent mistakes: all three are reported at once, each with its field path, '; '-joined."""
    doc = load_example("train.yaml")[0]
    doc["spec"].update(gpus=6, numProcesses=4, backoffLimit=-1)
    doc["spec"]["volumes"]["data"]["subPath"] = "../etc"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 2 and err.count("\n") == 1, err
    errors = err.removeprefix("kestrel-operator: InvalidSpec: ").rstrip("\n").split("; ")
    assert [e.split(":")[0] for e in errors] == ["spec.numProcesses", "spec.volumes.data.subPath", "spec.backoffLimit"]
    assert errors[1] == 'spec.volumes.data.subPath: Invalid value: "../etc": must be a relative path without \'..\''


def test_examples_secret_and_pvc_are_valid_core_objects():
    from tests.operator.k8s_schema import check_core

    assert check_core(load_example("secret.yaml")[0], "V1Secret") == []
    for pvc in load_example("pvc.yaml"):
        assert check_core(pvc, "V1PersistentVolumeClaim") == []


def test_operator_imports_without_tensorflow():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ImportError("tensorflow is blocked in this test")
        sys.meta_path.insert(0, Block())
        import kestrel_operator.cli, kestrel_operator.handlers, kestrel_operator.render
        from kestrel_operator.cli import main
        sys.exit(main(["render", "-f", sys.argv[1]]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "train.yaml")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kind: MPIJob" in proc.stdout


# --- -f as kubectl takes it: files, a directory, comma-separated lists, - for stdin -----------------------------------

def _kinds(out: str) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(out) if o]


def test_render_directory_equals_its_files(capsys, tmp_path):
    (tmp_path / "a-train.yaml").write_text((EXAMPLES / "train.yaml").read_text())
    (tmp_path / "b-prune.yml").write_text((EXAMPLES / "prune.yaml").read_text())
    (tmp_path / "README.md").write_text("not a manifest: kubectl skips it too")
    code_dir, out_dir, err = run_cli(capsys, "render", "-f", str(tmp_path), "--gpus-per-node", "8")
    assert code_dir == 0, err
    code_files, out_files, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "train.yaml"),
                                       "-f", str(EXAMPLES / "prune.yaml"), "--gpus-per-node", "8")
    assert code_files == 0
    assert out_dir == out_files
    train_only = run_cli(capsys, "render", "-f", str(EXAMPLES / "train.yaml"), "--gpus-per-node", "8")[1]
    assert len(_kinds(out_dir)) > len(_kinds(train_only)) > 0  # both files were read, the README was not
    code_comma, out_comma, _ = run_cli(capsys, "render", "-f", f"{EXAMPLES / 'train.yaml'},{EXAMPLES / 'prune.yaml'}",
                                       "--gpus-per-node", "8")
    assert (code_comma, out_comma) == (0, out_files)


def test_render_directory_recursive_only_with_R(capsys, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.yaml").write_text((EXAMPLES / "train.yaml").read_text())
    code, _, err = run_cli(capsys, "render", "-f", str(tmp_path))
    assert code == 2 and "no .yaml, .yml, .json files" in err and str(tmp_path) in err
    code, out, err = run_cli(capsys, "render", "-f", str(tmp_path), "-R")
    assert code == 0, err
    assert out == run_cli(capsys, "render", "-f", str(EXAMPLES / "train.yaml"))[1]


def test_render_stdin_dash():
    text = (EXAMPLES / "train.yaml").read_text()
    proc = subprocess.run([sys.executable, "-m", "kestrel_operator.cli", "render", "-f", "-"], input=text,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    direct = subprocess.run([sys.executable, "-m", "kestrel_operator.cli", "render", "-f",
                             str(EXAMPLES / "train.yaml")], capture_output=True, text=True)
    assert proc.stdout == direct.stdout and proc.stdout


def test_render_missing_file_is_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "render", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "nope.yaml" in err
