"""`kestrel runs remove PATH...`: deletes run folders RESULTS/runs/<16 lowercase hex> and nothing else.

Run as the operator runs it (the console command in a subprocess); file counts and sizes are the ones this test
wrote, and every refusal is checked to leave every file in place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_trainer.cli.runs_cmd import human_size

RUN_A, RUN_B = "0123456789abcdef", "fedcba9876543210"


def kestrel_runs(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "runs", *argv], capture_output=True,
                          text=True, timeout=120)


def make_run(runs: Path, name: str, sizes: list[int]) -> Path:
    """A run folder with files of these sizes, one of them two folders down."""
    folder = runs / name
    (folder / "weights" / "deep").mkdir(parents=True)
    for i, size in enumerate(sizes):
        where = folder / "weights" / "deep" if i == 0 else folder
        (where / f"f{i}.bin").write_bytes(b"x" * size)
    return folder


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_removes_run_folders_and_says_what_each_held(tmp_path):
    runs = tmp_path / "results" / "runs"
    a = make_run(runs, RUN_A, [1000, 2000, 100])
    b = make_run(runs, RUN_B, [5 * 2**20])
    # links inside a run folder are removed, never followed: what they point at stays
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "model.tlt").write_bytes(b"y" * 4096)
    (a / "link-to-file").symlink_to(outside / "model.tlt")
    (a / "link-to-folder").symlink_to(outside)
    keep = make_run(runs, "00000000000000aa", [10])  # another run, not named: stays
    proc = kestrel_runs("remove", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    assert not a.exists() and not b.exists() and keep.exists()
    assert (outside / "model.tlt").read_bytes() == b"y" * 4096
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    # a: 3 files + 2 links = 5 entries; 3,100 bytes of regular files (links count as files, not bytes)
    assert lines[0].endswith(f"removed run folder {a} (5 files, {3100 / 1024:.1f} KiB)"), lines[0]
    assert lines[0].endswith("(5 files, 3.0 KiB)")
    assert lines[1].endswith(f"removed run folder {b} (1 files, 5.0 MiB)"), lines[1]


def test_a_folder_already_gone_is_fine(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    a = make_run(runs, RUN_A, [7])
    proc = kestrel_runs("remove", str(runs / RUN_B), str(a))
    assert proc.returncode == 0, proc.stderr
    assert f"run folder {runs / RUN_B}: already gone" in proc.stderr
    assert f"removed run folder {a} (1 files, 7 B)" in proc.stderr and not a.exists()


@pytest.mark.parametrize(("bad", "why"), [
    ("results/runs/0123456789abcde", "16 lowercase hex"),  # 15 characters
    ("results/runs/0123456789ABCDEF", "16 lowercase hex"),
    ("results/runs/0123456789abcdeg", "16 lowercase hex"),
    ("results/runs/0123456789abcdef0", "16 lowercase hex"),
    ("results/runs", "16 lowercase hex"),
    ("results/runs/..", "16 lowercase hex"),
    ("results/other/0123456789abcdef", "parent folder must be named runs"),
    ("results/runs/0123456789abcdef/../fedcba9876543210/../../other/0123456789abcdef",
     "parent folder must be named runs"),
    ("results/runs/aaaaaaaaaaaaaaaa", "symbolic link"),
    ("results/runs/bbbbbbbbbbbbbbbb", "is not a folder"),
])
def test_refuses_anything_but_a_run_folder_and_removes_nothing(tmp_path, bad, why):
    results = tmp_path / "results"
    good = make_run(results / "runs", RUN_A, [10, 20])
    make_run(results / "runs", RUN_B, [30])
    make_run(results / "other", RUN_A, [40])
    (results / "runs" / "aaaaaaaaaaaaaaaa").symlink_to(good)  # a link named like a run
    (results / "runs" / "bbbbbbbbbbbbbbbb").write_text("a file named like a run")
    before = all_files(tmp_path)
    path = str(tmp_path / bad)
    proc = kestrel_runs("remove", str(good), path)  # a good path first: it is not removed either
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kestrel: error: runs remove: "), proc.stderr
    assert why in lines[0] and path in lines[0] and lines[0].endswith("nothing was removed")
    assert all_files(tmp_path) == before


def test_relative_paths_are_checked_where_they_point(tmp_path):
    runs = tmp_path / "runs"
    a = make_run(runs, RUN_A, [3])
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "runs", "remove", RUN_A],
                          capture_output=True, text=True, cwd=runs, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not a.exists()
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "runs", "remove", RUN_B],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "parent folder must be named runs" in proc.stderr


def test_no_path_is_a_usage_error():
    proc = kestrel_runs("remove")
    assert proc.returncode == 2 and "PATH" in proc.stderr


def test_human_sizes():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"  # 1536 / 1024
    assert human_size(5 * 2**20) == "5.0 MiB"
    assert human_size(3 * 2**30 + 2**29) == "3.5 GiB"
    assert human_size(2**50) == "1024.0 TiB"
