"""A ClassificationPrune that names a ClassificationTrain waits for that train to succeed, then runs."""

from __future__ import annotations

import datetime as dt

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.conftest import wait_until


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.usefixtures("operator")
def test_prune_from_train_waits_for_the_train_then_runs(cluster: cl.ControlPlane, namespace: str) -> None:
    train = ko.in_namespace(ko.example("train.yaml", "ClassificationTrain"), namespace, "base")
    prune = ko.in_namespace(ko.example("prune.yaml", "ClassificationPrune"), namespace, "base-pruned")
    prune["spec"]["model"] = {"fromTrain": "base"}
    ko.prepare(cluster, namespace, train)
    ko.prepare(cluster, namespace, prune)
    cluster.apply([prune, train])  # prune first: it must not start before its train succeeded
    prune_res = ko.get_resource(cluster, "ClassificationPrune", "base-pruned", namespace)

    waiting = wait_until(
        "prune reports that it waits for its train",
        lambda: (r := ko.get_resource(cluster, "ClassificationPrune", "base-pruned", namespace)).get("status")
        and r["status"].get("phase") == "Pending" and r,
    )
    assert "base" in str(waiting["status"]), waiting["status"]
    if ko.phase(cluster, "ClassificationTrain", "base", namespace) != "Succeeded":
        assert not ko.mpijobs_of(cluster, prune_res), "prune started before its train succeeded"

    train_done = ko.wait_phase(cluster, "ClassificationTrain", "base", namespace, "Succeeded", timeout=180)
    prune_done = ko.wait_phase(cluster, "ClassificationPrune", "base-pruned", namespace, "Succeeded", timeout=180)

    jobs = ko.mpijobs_of(cluster, prune_res)
    assert len(jobs) == 1
    # Ordering from the API server's own clock: the prune's MPIJob was created after the train completed.
    train_job = ko.mpijobs_of(cluster, train_done)[0]
    train_finished = _ts(ko.condition(train_job, "Succeeded")["lastTransitionTime"])
    assert _ts(jobs[0]["metadata"]["creationTimestamp"]) >= train_finished.replace(microsecond=0)
    # Single-process job: the launcher does the work, no worker pods.
    assert jobs[0]["spec"].get("runLauncherAsWorker") is True
    assert prune_done["status"].get("phase") == "Succeeded"
