"""Operator settings from the environment, and the layering rule: only kube.py (and the kopf handlers)
touch the API machinery; resources/, manifests/ and status/ stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kestrel_operator
from kestrel_operator.settings import Settings, SettingsError, from_env

PACKAGE = Path(kestrel_operator.__file__).parent


def test_settings_defaults_and_env():
    assert from_env({}) == Settings()
    s = from_env({"KESTREL_DEFAULT_IMAGE": "reg/img:1", "KESTREL_GPUS_PER_NODE": "4",
                  "KESTREL_WATCH_NAMESPACES": " a, b ,", "KESTREL_LOG_LEVEL": "debug"})
    assert (s.default_image, s.gpus_per_node, s.watch_namespaces, s.log_level) == ("reg/img:1", 4, ("a", "b"), "DEBUG")
    s = from_env({"KESTREL_RESYNC_SECONDS": "5", "KESTREL_WORKERS": "8"})
    assert (s.resync_seconds, s.workers) == (5, 8)
    assert from_env({}).run_ttl_seconds == 3600
    assert from_env({"KESTREL_RUN_TTL_SECONDS": "0"}).run_ttl_seconds == 0
    assert from_env({"KESTREL_RUN_TTL_SECONDS": "none"}).run_ttl_seconds is None
    s = from_env({})
    assert (s.rank_requests, s.shm_size, s.disruption_budget) == ({"cpu": "2", "memory": "8Gi"}, "2Gi", True)
    s = from_env({"KESTREL_RANK_CPU_REQUEST": "500m", "KESTREL_RANK_MEMORY_REQUEST": "none", "KESTREL_SHM_SIZE": "none",
                  "KESTREL_DISRUPTION_BUDGET": "false"})
    assert (s.rank_requests, s.shm_size, s.disruption_budget) == ({"cpu": "500m"}, None, False)
    assert from_env({}).termination_grace_seconds == 120
    assert from_env({"KESTREL_TERMINATION_GRACE_SECONDS": "300"}).termination_grace_seconds == 300


@pytest.mark.parametrize("env,needle", [
    ({"KESTREL_GPUS_PER_NODE": "eight"}, "KESTREL_GPUS_PER_NODE"),
    ({"KESTREL_GPUS_PER_NODE": "0"}, ">= 1"),
    ({"KESTREL_LOG_LEVEL": "LOUD"}, "KESTREL_LOG_LEVEL"),
    ({"KESTREL_RESYNC_SECONDS": "0"}, "KESTREL_RESYNC_SECONDS"),
    ({"KESTREL_RUN_TTL_SECONDS": "-1"}, "KESTREL_RUN_TTL_SECONDS"),
    ({"KESTREL_DISRUPTION_BUDGET": "yes"}, "KESTREL_DISRUPTION_BUDGET"),
    ({"KESTREL_TERMINATION_GRACE_SECONDS": "0"}, "KESTREL_TERMINATION_GRACE_SECONDS"),
])
def test_bad_settings_name_the_variable(env, needle):
    with pytest.raises(SettingsError, match=needle):
        from_env(env)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", ["resources", "manifests", "status"])
def test_pure_layers_do_not_import_kopf_or_the_client(layer):
    for path in (PACKAGE / layer).glob("*.py"):
        assert not _imports(path) & {"kopf", "kubernetes", "tensorflow"}, path


def test_only_kube_py_imports_the_kubernetes_client():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "kubernetes" in _imports(p)}
    assert users == {"kube.py"}
