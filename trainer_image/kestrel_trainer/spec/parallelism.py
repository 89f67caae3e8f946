"""GPUs, ranks and model parallelism: the one rule the trainer's flags and the operator's resources obey.

G GPUs (0: CPU only), P ranks (unset: one per GPU, 1 when G is 0), F entries of the spec's
`train_config.model_parallelism`, N GPUs per node. Each rank owns k = G/P GPUs (a CPU rank owns one device):
k must be whole, the model is split over a rank's k devices when k > 1 (F = k entries), and a rank cannot
span nodes (k <= N).

`RULES` is that rule as a table: per row the condition in Python, the same condition in CEL where the API
server can evaluate it from a resource's `spec` (the CRDs' x-kubernetes-validations are generated from the
rows, `kestrel_operator/resources/crd.py`), or the schema `minimum` it amounts to, and one message.
`parallelism()` evaluates the table; `kestrel train` calls it with its flag names (`FLAGS`) and the operator
with its field names (`FIELDS`), so both refuse the same inputs with the same words.

Pure Python: the operator imports it (never TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Terms:
    """What one side calls the inputs: flags (`--gpus`) or resource fields (`gpus`)."""

    gpus: str
    processes: str
    gpus_per_node: str
    fractions: str
    unset: str  # how `processes` is left unset

    def words(self) -> dict[str, str]:
        return {"gpus": self.gpus, "processes": self.processes, "gpus_per_node": self.gpus_per_node,
                "fractions": self.fractions, "unset": self.unset}


FIELDS = Terms(gpus="gpus", processes="numProcesses", gpus_per_node="gpusPerNode",
               fractions="train_config.model_parallelism", unset="unset")
FLAGS = Terms(gpus="--gpus", processes="--num_processes", gpus_per_node="GPUs per node",
              fractions="model_parallelism", unset="-1")


@dataclass(frozen=True)
class Counts:
    """The inputs, `processes` resolved. `fractions`/`gpus_per_node` None: not known (yet), not checked."""

    gpus: int
    processes: int
    fractions: Optional[int]
    gpus_per_node: Optional[int]
    single_process: bool

    @property
    def devices_per_rank(self) -> int:
        """k: GPUs per rank, or the one device of a CPU rank (G = 0)."""
        return self.gpus // self.processes if self.gpus else 1

    def value(self, name: str) -> Any:
        return getattr(self, name)


def _as_words(c: Counts, t: Terms) -> dict[str, Any]:
    return {**t.words(), "G": c.gpus, "P": c.processes, "F": c.fractions, "N": c.gpus_per_node,
            "k": c.devices_per_rank}


def _fractions_detail(c: Counts, t: Terms) -> str:
    w = _as_words(c, t)
    if c.devices_per_rank > 1:
        text = ("each rank gets {k} GPUs ({gpus} {G} / {processes} {P}), so {fractions} needs {k} entries, "
                "got {F}").format(**w)
    elif c.gpus == 0:
        text = "{fractions} has {F} entries but a CPU rank ({gpus} 0) has one device".format(**w)
    else:
        text = "{fractions} has {F} entries but each rank gets 1 GPU ({gpus} {G} / {processes} {P})".format(**w)
    if (c.fractions or 0) > 1:
        text += "; {F} entries need {gpus} = {FP} with {processes} = {P}".format(FP=c.fractions * c.processes, **w)
    return text


@dataclass(frozen=True)
class Rule:
    """One row: `holds(counts)` in Python; `cel` the same over a resource's spec (None: the API server cannot
    check it, it needs the spec text or the operator's default gpusPerNode); or `minimum`, a schema bound."""

    key: str
    field: str  # the input the message blames: gpus, processes, gpus_per_node or fractions
    message: str  # one sentence over Terms' names: the CEL rule's message, and the start of Python's
    holds: Callable[[Counts], bool]
    uses: tuple[str, ...]  # inputs the condition reads: the row is skipped while one is unknown or out of bounds
    detail: Optional[Callable[[Counts, Terms], str]] = None  # the numbers, after the message
    cel: Optional[str] = None
    minimum: Optional[int] = None
    single_process_only: bool = False  # a row for tasks that run one process (prune, export)

    def text(self, terms: Terms) -> str:
        return self.message.format(**terms.words())


RULES: tuple[Rule, ...] = (
    Rule("gpus-at-least-0", "gpus", "{gpus} must be >= 0 (0: CPU only)",
         lambda c: c.gpus >= 0, ("gpus",), minimum=0),
    Rule("processes-at-least-1", "processes",
         "{processes} must be >= 1, or {unset} for one rank per GPU (1 when {gpus} is 0)",
         lambda c: c.processes >= 1, ("processes",), minimum=1),
    Rule("gpus-per-node-at-least-1", "gpus_per_node", "{gpus_per_node} must be >= 1",
         lambda c: c.gpus_per_node >= 1, ("gpus_per_node",), minimum=1),
    Rule("one-process", "processes", "{processes} must be 1: this task runs one process",
         lambda c: not c.single_process or c.processes == 1, ("processes",),
         cel="!has(self.numProcesses) || self.numProcesses == 1", single_process_only=True),
    Rule("gpus-multiple-of-processes", "processes",
         "{gpus} must be a multiple of {processes}",
         lambda c: c.gpus == 0 or c.gpus % c.processes == 0, ("gpus", "processes"),
         detail=lambda c, t: f"{t.gpus} {c.gpus}, {t.processes} {c.processes}",
         cel="!has(self.numProcesses) || self.gpus == 0 || self.gpus % self.numProcesses == 0"),
    Rule("rank-fits-a-node", "processes",
         "a rank's GPUs ({gpus}/{processes}) must fit on one node ({gpus_per_node})",
         lambda c: c.gpus // c.processes <= c.gpus_per_node, ("gpus", "processes", "gpus_per_node"),
         detail=lambda c, t: f"each rank needs {c.gpus // c.processes} GPUs but a node has {c.gpus_per_node}",
         cel="!has(self.gpusPerNode) || !has(self.numProcesses) || self.gpus / self.numProcesses <= self.gpusPerNode"),
    # Needs the spec text, which the API server cannot read. Not checked while k is not whole (the row above).
    Rule("fractions-per-rank", "fractions",
         "{fractions} must have one entry per GPU of a rank (at most one with 1 GPU per rank)",
         lambda c: (c.gpus > 0 and c.gpus % c.processes != 0) or c.fractions == c.devices_per_rank
         or (c.devices_per_rank == 1 and c.fractions <= 1),
         ("gpus", "processes", "fractions"), detail=_fractions_detail),
)
BOUNDS = {r.field: r for r in RULES if r.minimum is not None}


@dataclass(frozen=True)
class Violation:
    rule: Rule
    field: str  # gpus, processes, gpus_per_node or fractions
    value: Any
    message: str  # in the caller's terms, with the numbers


@dataclass(frozen=True)
class Parallelism:
    ranks: int  # P
    gpus_per_rank: int  # k (0: CPU only)
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def message(self) -> str:
        """Every violation, one line: '; '-joined."""
        return "; ".join(v.message for v in self.violations)


def default_processes(gpus: int) -> int:
    """Ranks when the number is not given: one per GPU, one CPU rank when there are none."""
    return max(gpus, 1)


def parallelism(
    gpus: int,
    processes: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    gpus_per_node: Optional[int] = None,
    single_process: bool = False,
    terms: Terms = FIELDS,
) -> Parallelism:
    """Resolve the ranks and evaluate every applicable row of RULES (all of them, not the first failing).

    `fractions` None: the spec is not known yet; `gpus_per_node` None: no node limit (one machine).
    """
    counts = Counts(gpus=gpus, processes=default_processes(gpus) if processes is None else processes,
                    fractions=None if fractions is None else len(fractions), gpus_per_node=gpus_per_node,
                    single_process=single_process)
    out_of_bounds = {field for field, rule in BOUNDS.items()
                     if counts.value(field) is not None and not rule.holds(counts)}
    violations = []
    for rule in RULES:
        if any(counts.value(name) is None for name in rule.uses):
            continue
        if rule.minimum is None and out_of_bounds & set(rule.uses):
            continue
        if not rule.holds(counts):
            detail = rule.detail(counts, terms) if rule.detail else ""
            message = rule.text(terms) + (f": {detail}" if detail else "")
            value = list(fractions or ()) if rule.field == "fractions" else counts.value(rule.field)
            violations.append(Violation(rule, rule.field, value, message))
    whole = counts.processes >= 1 and not out_of_bounds
    per_rank = counts.gpus // counts.processes if whole and counts.gpus else 0
    return Parallelism(ranks=counts.processes, gpus_per_rank=per_rank, violations=tuple(violations))
