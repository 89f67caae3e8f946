"""Shards, step counts and batch plans: plain arithmetic, checked against hand-computed values and counting."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_trainer.data import sharding
from kestrel_trainer.errors import DataError

DATA_PACKAGE = Path(sharding.__file__).parent


@pytest.mark.parametrize("n_files,batch,size,steps", [
    (13, 4, 1, 4),  # 4 + 4 + 4 + 1
    (13, 4, 2, 2),  # shards of 7 and 6: 7 needs 4 + 3
    (12, 3, 4, 1),  # shards of 3
    (54000, 64, 1, 844),  # Fashion-MNIST's training split: 843 full batches and one of 48
    (54000, 64, 3, 282),  # 18,000 per rank: 281 full batches and one of 16
    (5, 1, 2, 3),  # shards of 3 and 2 images, one per batch
])
def test_steps_per_epoch_by_hand(n_files, batch, size, steps):
    assert sharding.steps_per_epoch(n_files, batch, size) == steps


@pytest.mark.parametrize("n_files,size", [(13, 1), (13, 2), (13, 4), (12, 3), (7, 7), (100, 6)])
def test_shards_are_disjoint_cover_the_set_and_differ_by_at_most_one(n_files, size):
    shards = [list(sharding.shard_indices(n_files, r, size)) for r in range(size)]
    everything = sorted(i for s in shards for i in s)
    assert everything == list(range(n_files))  # each file exactly once
    assert shards[0][:3] == list(range(0, min(3 * size, n_files), size))  # rank 0: 0, size, 2 * size
    sizes = [sharding.shard_size(n_files, r, size) for r in range(size)]
    assert sizes == [len(s) for s in shards] and max(sizes) - min(sizes) <= 1
    assert sizes[0] == math.ceil(n_files / size)


def _batches(segments):
    """The batch sizes a plan yields: each segment batched with its last partial batch kept."""
    out = []
    for _, count, batch in segments:
        out += [batch] * (count // batch) + ([count % batch] if count % batch else [])
    return out


def test_batch_plan_keeps_partial_batches_and_splits_only_when_one_batch_short():
    assert sharding.batch_plan(7, 3, 3) == [(0, 7, 3)]  # 3, 3, 1: the natural plan
    assert _batches(sharding.batch_plan(6, 3, 3)) == [3, 2, 1]  # 6 images but 3 steps: the last 3 split 2 + 1
    assert _batches(sharding.batch_plan(2, 1, 3)) == [1, 1, 1]  # batch 1: the first image again
    assert sharding.batch_plan(2, 1, 3)[1] == (0, 1, 1)
    with pytest.raises(ValueError, match="more than 1 steps"):
        sharding.batch_plan(7, 3, 1)


@pytest.mark.parametrize("n_files,batch,size", [(13, 4, 2), (13, 2, 3), (12, 4, 3), (13, 3, 4), (9, 4, 2),
                                                 (5, 1, 2), (17, 8, 2), (54000, 64, 7)])
def test_every_rank_runs_the_same_steps_and_sees_its_whole_shard(n_files, batch, size):
    plans = [sharding.plan_epoch(n_files, batch, r, size) for r in range(size)]
    steps = math.ceil(math.ceil(n_files / size) / batch)
    for plan in plans:
        sizes = _batches(plan.segments)
        assert plan.steps == steps and len(sizes) == steps  # Horovod: the same number of steps everywhere
        assert all(1 <= s <= batch for s in sizes)
        covered = sorted({i for start, count, _ in plan.segments for i in range(start, start + count)})
        assert covered == list(range(len(plan.shard)))  # no image of the shard left out
        repeated = sum(sizes) - len(plan.shard)
        assert repeated == 0 or batch == 1  # an image is seen twice in an epoch only with batch 1


def test_bad_requests_are_refused():
    with pytest.raises(DataError, match="3 images cannot be split across 4 ranks"):
        sharding.steps_per_epoch(3, 2, 4)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sharding.steps_per_epoch(3, 0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        sharding.shard_indices(5, 2, 2)


def test_sharding_imports_no_tensorflow():
    code = ("import sys, kestrel_trainer.data.sharding as s; s.plan_epoch(13, 4, 1, 2); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _data_imports(path: Path) -> set[str]:
    """The kestrel_trainer.data modules a file imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[2] for n in names if n.startswith("kestrel_trainer.data.") and n.count(".") >= 2}
    return found - {path.stem}


def test_the_data_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _data_imports(p) & {q.stem for q in DATA_PACKAGE.glob("*.py")}
             for p in DATA_PACKAGE.glob("*.py")}
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "sharding" in graph["decoded"] and "pipeline" not in graph["decoded"]
