"""The CRDs' CEL rules on the real kube-apiserver agree with the table the operator checks in Python
(operator/kestrel_operator/resources/rules.py, GPU/rank rows from kestrel_trainer.spec.parallelism): every case
of tests/operator/test_cel_rules.py is sent with `kubectl apply --dry-run=server`, and the server refuses it
exactly when the table says a row is broken, naming each broken row's message."""

from __future__ import annotations

import pytest
import yaml

from e2e import cluster as cl
from tests.operator.test_cel_rules import CASES, _body, _verdicts


@pytest.mark.usefixtures("kestrel_crds")
def test_api_server_refuses_exactly_what_the_table_refuses(cluster: cl.ControlPlane, namespace: str) -> None:
    refused = 0
    for kind, changes in CASES:
        body = _body(kind, changes)
        body["metadata"]["namespace"] = namespace
        broken = sorted({row.message for row, _, by_cel, by_python in _verdicts(kind, body)
                         if not by_cel and not by_python})
        out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(body), check=False)
        case = f"{kind} {changes}"
        if broken:
            refused += 1
            assert out.returncode != 0, f"{case}: the server accepted what the table refuses ({broken})"
            for message in broken:
                assert message in out.stderr, f"{case}: {message!r} not in {out.stderr}"
        else:
            assert out.returncode == 0, f"{case}: the table accepts it, the server said {out.stderr}"
    assert 10 < refused < len(CASES)
