"""Pure status helpers: phase from MPIJob conditions, conditions that keep their transition time,
stale progress, and which changes deserve an Event."""

from __future__ import annotations

import pytest

from kestrel_operator.status import compute
from kestrel_operator.status.conditions import mirror, set_condition
from kestrel_operator.status.phase import phase_of
from kestrel_operator.status.progress import merge_progress, progress_for_run


def job(*conds, name="x-g1"):
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": t, "status": s, "reason": f"MPIJob{t}", "message": f"{t} msg",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
        for t, s in conds]}}


@pytest.mark.parametrize("conds,phase,reason", [
    ((), "Pending", "MPIJobPending"),
    ((("Created", "True"),), "Pending", "MPIJobCreated"),
    ((("Created", "True"), ("Running", "True")), "Running", "MPIJobRunning"),
    ((("Created", "True"), ("Running", "False"), ("Restarting", "True")), "Running", "MPIJobRestarting"),
    ((("Created", "True"), ("Running", "True"), ("Succeeded", "True")), "Succeeded", "MPIJobSucceeded"),
    ((("Created", "True"), ("Running", "False"), ("Failed", "True")), "Failed", "MPIJobFailed"),
    ((("Created", "True"), ("Suspended", "True")), "Suspended", "MPIJobSuspended"),
])
def test_phase_from_conditions(conds, phase, reason):
    p = phase_of(job(*conds))
    assert (p.phase, p.reason) == (phase, reason)


def test_missing_mpijob_is_pending():
    assert phase_of(None).phase == "Pending"


def test_set_condition_keeps_transition_time_when_status_unchanged():
    first = set_condition([], "Failed", "True", "InvalidSpec", "a", now="T1")
    again = set_condition(first, "Failed", "True", "InvalidSpec", "b", now="T2")
    assert again[0]["lastTransitionTime"] == "T1" and again[0]["message"] == "b"
    flipped = set_condition(again, "Failed", "False", "Fixed", "c", now="T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_mirror_takes_mpijob_times_and_drops_unknown_types():
    conds = mirror(None, job(("Created", "True"), ("Suspended", "False"))["status"]["conditions"], now="NOW")
    assert [c["type"] for c in conds] == ["Created"]
    assert conds[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    no_time = [{"type": "Running", "status": "True", "reason": "R"}]
    first = mirror(None, no_time, now="T1")
    assert mirror(first, no_time, now="T2")[0]["lastTransitionTime"] == "T1"


def test_run_status_succeeded_reports_output_and_times():
    j = job(("Created", "True"), ("Succeeded", "True"))
    j["status"].update(startTime="2026-01-01T00:00:00Z", completionTime="2026-01-01T01:00:00Z")
    out = {"claimName": "results", "subPath": "a", "relativePath": "weights/resnet_012.tlt",
           "path": "/results/weights/resnet_012.tlt"}
    patch = compute.run_status({}, 2, j, "x-g2", out, None, now="N")
    assert patch["phase"] == "Succeeded" and patch["observedGeneration"] == 2
    assert patch["outputPath"] == "/results/weights/resnet_012.tlt"
    assert patch["output"] == {"claimName": "results", "subPath": "a", "relativePath": "weights/resnet_012.tlt"}
    assert patch["completionTime"] == "2026-01-01T01:00:00Z"
    running = compute.run_status({}, 2, job(("Running", "True")), "x-g2", out, None, now="N")
    assert running["outputPath"] is None


def test_stale_progress_of_an_older_run_is_dropped():
    old = {"progress": {"epoch": 5, "run": "x-g1"}}
    patch = compute.run_status(old, 2, job(("Running", "True"), name="x-g2"), "x-g2", None, None, now="N")
    assert patch["progress"] is None
    current = {"progress": {"epoch": 5, "run": "x-g2"}}
    assert "progress" not in compute.run_status(current, 2, job(("Running", "True")), "x-g2", None, None, "N")


def test_progress_merge_never_goes_backwards_within_a_run():
    a = {"run": "r", "epoch": 4, "loss": 0.5}
    assert merge_progress(a, {"run": "r", "epoch": 3, "loss": 0.9})["epoch"] == 4
    assert merge_progress(a, {"run": "r", "epoch": 5, "loss": 0.4})["loss"] == 0.4
    assert merge_progress(a, {"run": "s", "epoch": 1})["epoch"] == 1
    assert progress_for_run({"run": "r"}, "s") is None and progress_for_run({"epoch": 1}, "s") == {"epoch": 1}


def test_differs_and_transition_event():
    patch = compute.invalid_status({}, 1, "bad", now="N")
    assert compute.differs({}, patch)
    applied = {k: v for k, v in patch.items() if v is not None}
    assert not compute.differs(applied, compute.invalid_status(applied, 1, "bad", now="LATER"))
    assert compute.transition_event({}, patch) == ("Warning", "InvalidSpec", f"Failed: {patch['message']}")
    assert patch["message"].startswith("bad (fix the resource")
    assert compute.transition_event(applied, patch) is None
