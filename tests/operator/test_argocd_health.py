"""Argo CD health checks (deploy/argocd): every health_test.yaml case run in a real Lua 5.1 as Argo CD runs it,
the fixtures and the test lists in step, the generated copies and the argocd-cm patch in sync with the one source,
and the check never raising on partial objects."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaError

from kestrel_operator import GROUP
from kestrel_operator.resources.types import KINDS
from tests.operator.argocd_lua import (
    CUSTOMIZATIONS,
    HEALTH_STATUSES,
    INVALID_HEALTH_STATUS,
    argocd_health,
    health_script,
    run_health_lua,
)

REPO = Path(__file__).resolve().parents[2]
CAPTURED = "# captured from a real object of the e2e suite"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_argocd_health", REPO / "scripts" / "gen_argocd_health.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _check_dirs() -> list[Path]:
    """Every folder holding a health.lua, as Argo CD's TestLuaHealthScript walks resource_customizations."""
    return sorted(path.parent for path in CUSTOMIZATIONS.rglob("health.lua"))


def _tests(check_dir: Path) -> list[dict[str, Any]]:
    return yaml.safe_load((check_dir / "health_test.yaml").read_text())["tests"]


def _cases() -> list[Any]:
    cases = []
    for check_dir in _check_dirs():
        for test in _tests(check_dir):
            name = f"{check_dir.relative_to(CUSTOMIZATIONS).as_posix()}/{test['inputPath']}"
            cases.append(pytest.param(check_dir, test, id=name))
    return cases


@pytest.mark.parametrize(("check_dir", "test"), _cases())
def test_health_case(check_dir: Path, test: dict[str, Any]) -> None:
    """Argo CD's own harness: load inputPath, pick the check by the object's group/kind, compare {status, message}
    (a missing message in the test is "", as Go's zero value)."""
    obj = yaml.safe_load((check_dir / test["inputPath"]).read_text())
    group = obj["apiVersion"].split("/")[0]
    assert (group, obj["kind"]) == (check_dir.parent.name, check_dir.name), "fixture is for another check"
    expected = (test["healthStatus"]["status"], test["healthStatus"].get("message", ""))
    assert argocd_health(obj["kind"], obj) == expected


def test_checks_cover_the_operators_kinds() -> None:
    assert [d.relative_to(CUSTOMIZATIONS).as_posix() for d in _check_dirs()] == sorted(
        f"{GROUP}/{kind}" for kind in KINDS)
    assert (GEN.GROUP, set(GEN.KINDS)) == (GROUP, set(KINDS))


@pytest.mark.parametrize("kind", list(KINDS))
def test_fixtures_and_test_list_match(kind: str) -> None:
    """Every testdata file is a case of health_test.yaml and every case's file exists, once; each test has Argo CD's
    shape (healthStatus {status, message}, inputPath) and a status Argo CD knows."""
    check_dir = CUSTOMIZATIONS / GROUP / kind
    tests = _tests(check_dir)
    paths = [test["inputPath"] for test in tests]
    assert len(paths) == len(set(paths)), f"{kind}: an inputPath is listed twice"
    on_disk = sorted(p.relative_to(check_dir).as_posix() for p in (check_dir / "testdata").rglob("*") if p.is_file())
    assert sorted(paths) == on_disk
    for test in tests:
        assert set(test) == {"healthStatus", "inputPath"}, test
        assert set(test["healthStatus"]) <= {"status", "message"}, test
        assert test["healthStatus"]["status"] in HEALTH_STATUSES, test


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_fixture_is_a_real_object_captured_from_e2e(kind: str) -> None:
    """Fixtures are objects the e2e suite's real runs produced (KESTREL_E2E_CAPTURE, e2e/captures.py), not statuses
    written by hand: each has the capture's header, a uid and resourceVersion the API server gave it."""
    for path in sorted((CUSTOMIZATIONS / GROUP / kind / "testdata").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith(CAPTURED), path
        meta = yaml.safe_load(text)["metadata"]
        assert meta.get("uid") and meta.get("resourceVersion") and meta.get("creationTimestamp"), path


def test_generated_files_in_sync() -> None:
    """The per-kind health.lua files and argocd-cm-patch.yaml are what scripts/gen_argocd_health.py writes."""
    stale = [str(path.relative_to(REPO)) for path in GEN.stale()]
    assert not stale, f"stale: {stale}; run: python scripts/gen_argocd_health.py"


def test_argocd_cm_patch_holds_the_checks() -> None:
    """Read back as YAML, the patch is argocd-cm with one key per kind whose value is that kind's health.lua."""
    patch = yaml.safe_load(GEN.CM_PATCH.read_text())
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert patch["data"] == {f"resource.customizations.health.{GROUP}_{kind}": health_script(kind) for kind in KINDS}
    assert len({health_script(kind) for kind in KINDS}) == 1
    assert health_script("ClassificationTrain") == GEN.SOURCE.read_text()


def _partial_objects() -> list[dict[str, Any]]:
    """Objects with fields missing, null, empty or of the wrong type, on top of every phase."""
    metas = [None, {}, {"generation": 1}, {"generation": "1"}, {"generation": 2}]
    conditions = [None, [], "x", [{}], [{"type": "Stalled"}], [{"type": "Ready", "status": "True"}],
                  [{"type": "Promoted", "status": "False"}, {"type": "Ready", "status": "False", "message": 7}],
                  [{"type": "Stalled", "status": "True", "message": None}]]
    progresses = [None, {}, "x", {"epoch": 2}, {"epoch": "2", "maxEpoch": 0, "percent": "20", "eta": 5},
                  {"maxEpoch": 10, "percent": 12.5, "eta": ""}]
    phases = [None, "", "Pending", "Running", "Suspended", "Succeeded", "Failed", "Weird", 3]
    objects: list[dict[str, Any]] = [{}, {"status": None}, {"status": []}, {"status": "x"}]
    for meta, conds, progress, phase in itertools.product(metas, conditions, progresses, phases):
        status = {"observedGeneration": 1, "phase": phase, "conditions": conds, "progress": progress}
        objects.append({"metadata": meta, "status": status})
    objects.append({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "message": {"a": 1},
                                                              "reason": ["b"], "phase": "Failed"}})
    return objects


@pytest.mark.parametrize("kind", list(KINDS))
def test_partial_objects_never_raise(kind: str) -> None:
    """"Never a Lua error": any missing or malformed field gives one of Argo CD's statuses and a string message."""
    for obj in _partial_objects():
        status, message = argocd_health(kind, obj)
        assert status in HEALTH_STATUSES and status != "Unknown", (obj, status, message)
        assert isinstance(message, str)


def test_runner_mimics_argocd() -> None:
    """The runner is Lua 5.1 without the libraries Argo CD leaves out for argocd-cm checks, and reads the result
    as Argo CD does."""
    assert run_health_lua("return {status = _VERSION}", {}) == ("Unknown", INVALID_HEALTH_STATUS)
    assert run_health_lua("return {status = 'Healthy', message = _VERSION}", {}) == ("Healthy", "Lua 5.1")
    assert run_health_lua("return {status = 'Degraded'}", {}) == ("Degraded", "")
    assert run_health_lua("return {status = 'Healthy', message = obj.a[2].b .. #obj.a}",
                          {"a": [{"b": "x"}, {"b": "y"}]}) == ("Healthy", "y2")
    assert run_health_lua("return {status = 'Healthy', message = tostring(obj.n + 1) .. tostring(obj.z)}",
                          {"n": 2, "z": None}) == ("Healthy", "3nil")
    for script in ("return {status = string.upper('healthy')}", "return {status = ('x'):upper()}",
                   "return {status = tostring(math.floor(1.5))}", "return {status = io.write('x')}"):
        with pytest.raises(LuaError):
            run_health_lua(script, {})
    assert run_health_lua("return {status = ('Healthy'):sub(1)}", {}, open_libs=True) == ("Healthy", "")
    with pytest.raises(LuaError):  # Lua 5.2+ syntax does not parse in 5.1
        run_health_lua("goto done ::done:: return {status = 'Healthy'}", {})
    with pytest.raises(TypeError):
        run_health_lua("return 'Healthy'", {})
