"""The operator killed at every step of a reconcile, then restarted: same end state as a run never interrupted.

A scenario is a few resources reconciled until nothing changes. Uninterrupted, its passes make n writes (create,
patch, status patch, delete, Event). For every k < n the same scenario runs against an API that lets k writes
through and kills the operator at the next one (the process dies: no error handling, no status written, the pass
just stops); then a new Reconciler with a healthy API reconciles every resource until nothing changes. The API
store must then hold exactly the objects of the uninterrupted run (same kinds, names, specs, owners), each created
once, with the same status on every resource, and no Event said twice but one: an Event is posted before the
status write that records the change it announces, so an operator killed between the two says it again after the
restart (at least once, never lost). Which Events are said can differ (a restart that finds the MPIJob already
created announces its phase, not "created MPIJob").
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from kestrel_operator.handlers.reconcile import Reconciler
from tests.operator.conftest import prune_body, train_body
from tests.operator.fake_api import FakeApi
from tests.operator.test_handlers import cond

NOW = "2026-03-01T12:00:00Z"
TRAIN = ("ClassificationTrain", "resnet18")
PRUNE = ("ClassificationPrune", "pruned")
WRITES = ("create", "patch", "patch_status", "delete", "post_event")
MAX_PASSES = 8
FIXED_UIDS = ("uid-train", "uid-prune")  # our resources' uids; the store numbers every object it creates


class Killed(BaseException):
    """SIGKILL of the operator process: raised past every `except Exception`, so nothing after it runs."""


class DyingApi:
    """The API as a dying operator sees it: `budget` writes go through, the next one kills the process."""

    def __init__(self, api: FakeApi, budget: float) -> None:
        self.api, self.budget, self.writes = api, budget, 0
        self.last_event: tuple[str, str, str] | None = None  # the Event posted by the last write, if it was one

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.api, name)
        if name not in WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            if self.writes >= self.budget:
                raise Killed(f"killed before write {self.writes + 1} ({name})")
            self.writes += 1
            self.last_event = (args[0]["metadata"]["name"], *args[1:3]) if name == "post_event" else None
            return attr(*args, **kwargs)

        return write


def _with_uid(body: dict[str, Any], uid: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"]["uid"] = uid  # fixed, so owner references compare across runs
    return body


def reconcile_until_settled(api: Any, settings, keys: list[tuple[str, str]]) -> None:
    """Passes over `keys` (fresh bodies from the store each time) until one pass writes nothing."""
    rec = Reconciler(api, settings)
    store: FakeApi = getattr(api, "api", api)
    for _ in range(MAX_PASSES):
        before = len(store.calls), len(store.events)
        written = 0
        for kind, name in keys:
            calls = len(store.calls)
            rec.reconcile(store.body(kind, name), now=NOW)
            written += sum(1 for verb, _ in store.calls[calls:] if verb in WRITES)
        if not written and len(store.events) == before[1]:
            return
    raise AssertionError(f"{keys} still changing after {MAX_PASSES} passes")


@dataclass
class Scenario:
    """`setup` brings a fresh store to the state the interrupted pass starts from (with a healthy operator)."""

    setup: Callable[[FakeApi, Any], None]
    keys: list[tuple[str, str]]


def _new_train(api: FakeApi, settings) -> None:
    api.put(_with_uid(train_body(), "uid-train"))


def _running_train(api: FakeApi, settings) -> None:
    _new_train(api, settings)
    reconcile_until_settled(api, settings, [TRAIN])
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Running", "True")]),
                              startTime="2026-03-01T11:00:00Z")
    reconcile_until_settled(api, settings, [TRAIN])


def _spec_edited(api: FakeApi, settings) -> None:
    _running_train(api, settings)
    api.put(_with_uid(train_body(useAmp=True), "uid-train"))  # generation 2: the run restarts


def _deadline_edited(api: FakeApi, settings) -> None:
    _running_train(api, settings)
    api.put(_with_uid(train_body(activeDeadlineSeconds=7200), "uid-train"))  # patched into the running MPIJob


def _train_succeeds_with_a_prune_waiting(api: FakeApi, settings) -> None:
    api.put(_with_uid(prune_body(), "uid-prune"))
    _running_train(api, settings)
    reconcile_until_settled(api, settings, [PRUNE])
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Succeeded", "True")]),
                              startTime="2026-03-01T11:00:00Z", completionTime="2026-03-01T11:30:00Z")


SCENARIOS = {
    "new-train": Scenario(_new_train, [TRAIN]),
    "spec-edit-restarts-the-run": Scenario(_spec_edited, [TRAIN]),
    "deadline-edit-in-place": Scenario(_deadline_edited, [TRAIN]),
    "train-succeeds-prune-starts": Scenario(_train_succeeds_with_a_prune_waiting, [TRAIN, PRUNE]),
}


def end_state(api: FakeApi) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every object in the store, without what the store assigns per write (uid of created objects, versions)."""
    out = {}
    for key, obj in api.objects.items():
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.pop("resourceVersion", None)
        if meta.get("uid") not in FIXED_UIDS:
            meta.pop("uid", None)
        out[key] = obj
    return out


def _run(scenario: Scenario, settings, budget: float) -> tuple[FakeApi, DyingApi]:
    """The scenario with the operator killed after `budget` writes (inf: never), then a healthy restart.
    Returns the store and the dying API (its writes before the kill, the Event it posted last)."""
    api = FakeApi()
    scenario.setup(api, settings)
    # Earlier passes of the setup are not part of the scenario: count creates from here.
    api.creates.clear()
    events_before = len(api.events)
    dying = DyingApi(api, budget)
    try:
        reconcile_until_settled(dying, settings, scenario.keys)
    except Killed:
        reconcile_until_settled(api, settings, scenario.keys)  # the restarted operator, healthy API
    api.events[:] = api.events[events_before:]
    return api, dying


def _events(api: FakeApi) -> Counter:
    return Counter((name, etype, reason) for name, etype, reason, _ in api.events)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_killed_after_any_write_then_restarted_ends_as_the_uninterrupted_run(name, settings):
    scenario = SCENARIOS[name]
    baseline, whole = _run(scenario, settings, float("inf"))
    n = whole.writes
    assert n >= 3, f"{name}: the scenario makes {n} write(s); nothing to interrupt"
    expected, expected_events = end_state(baseline), _events(baseline)
    for k in range(n):
        api, dying = _run(scenario, settings, k)
        where = f"{name}, operator killed after {k} of {n} writes"
        assert dying.writes == k, where
        state = end_state(api)
        assert sorted(state) == sorted(expected), f"{where}: objects differ"
        for key in expected:
            assert state[key] == expected[key], f"{where}: {key} differs"
        duplicated = [c for c, times in Counter(api.creates).items() if times > 1]
        assert not duplicated, f"{where}: created twice: {duplicated}"
        said = _events(api)
        again = [e for e in said if said[e] > max(expected_events[e], 1) + (e == dying.last_event)]
        assert not again, f"{where}: Events said twice: {said}"
