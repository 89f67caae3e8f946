"""The one progress helper of the long local commands (kestrel_trainer/progress.py): a tqdm bar on a terminal,
plain periodic lines elsewhere, never both; and the commands really use it (evaluate, dataset import)."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys

import pytest

from kestrel_trainer.progress import Progress, format_duration, plain_line, progress
from tests.terminal import read_until_closed


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="kestrel.progress"):
        items = list(progress(range(5), desc="work", unit="batch", stream=stream, interval=0.0))
    assert items == [0, 1, 2, 3, 4]
    assert stream.getvalue() == ""  # no bar drawn on a non-terminal
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("work: 1/5 batch (20%)") and "ETA" in lines[0]
    assert lines[-1].startswith("work: 5/5 batch (100%)") and lines[-1].endswith("ETA 0s")
    assert len(lines) == 5  # 4 periodic (interval 0) + the final one; the 5th update is left to the final line


def test_plain_lines_are_rate_limited(caplog):
    with caplog.at_level(logging.INFO, logger="kestrel.progress"):
        list(progress(range(1000), desc="fast", stream=io.StringIO(), interval=3600))
    assert [r.getMessage()[:15] for r in caplog.records] == ["fast: 1000/1000"]  # only the final line


def test_quiet_where_info_is_not_logged(caplog):
    """The other ranks of a training run log warnings only: no bar (even on a terminal) and no lines."""
    stream = FakeTty()
    with caplog.at_level(logging.WARNING, logger="kestrel.progress"), \
            Progress(total=3, desc="rank 1", stream=stream, interval=0.0) as bar:
        assert not bar.is_bar
        bar.update(3)
    assert stream.getvalue() == "" and caplog.records == []


def test_bar_on_a_terminal_and_no_plain_lines(caplog):
    stream = FakeTty()
    with caplog.at_level(logging.INFO, logger="kestrel.progress"), \
            Progress(total=4, desc="calib", unit="batch", stream=stream, interval=0.0) as bar:
        assert bar.is_bar
        for _ in range(4):
            bar.update(1)
    drawn = stream.getvalue()
    assert "calib" in drawn and "4/4" in drawn and "100%" in drawn
    assert caplog.records == []  # never both


def test_plain_line_text():
    assert plain_line("evaluate", 40, 100, "batch", 12.0) == "evaluate: 40/100 batch (40%), 12s elapsed, ETA 18s"
    assert plain_line("import", 10, None, "img", 2.0) == "import: 10 img, 2s elapsed, 5.0 img/s"
    assert format_duration(250) == "4m10s"


def test_interval_from_environment(monkeypatch):
    monkeypatch.setenv("KESTREL_PROGRESS_SECONDS", "2.5")
    assert Progress(total=1, stream=io.StringIO()).interval == 2.5
    monkeypatch.setenv("KESTREL_PROGRESS_SECONDS", "soon")
    assert Progress(total=1, stream=io.StringIO()).interval == 10.0


def _import_cmd(out) -> list[str]:
    return [sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist", "--out", str(out),
            "--per-class", "3"]


def test_dataset_import_prints_plain_lines_in_a_pipe(tmp_path):
    env = {**os.environ, "KESTREL_PROGRESS_SECONDS": "0"}
    proc = subprocess.run(_import_cmd(tmp_path / "d"), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "import: " in line and "img" in line]
    assert lines and "90/90 img (100%)" in lines[-1]  # 3 per class x 10 classes x 3 splits
    assert "\r" not in proc.stderr  # no bar redraws in a pipe


def test_dataset_import_draws_a_bar_on_a_terminal(tmp_path):
    """A real pseudo-terminal as stderr: tqdm's bar (carriage-return redraws, ETA field), no plain lines."""
    controller, worker = pty.openpty()
    env = {**os.environ, "KESTREL_PROGRESS_SECONDS": "0"}
    proc = subprocess.Popen(_import_cmd(tmp_path / "d"), stdout=subprocess.DEVNULL, stderr=worker, env=env)
    os.close(worker)
    text = read_until_closed(controller).decode("utf-8", "replace")
    assert proc.wait(timeout=120) == 0
    os.close(controller)
    assert "import: 100%" in text and "90/90" in text and "\r" in text
    assert "elapsed, ETA" not in text  # the plain line format never appears beside the bar


@pytest.mark.parametrize("total", [0, 3])
def test_close_is_idempotent(total):
    bar = Progress(total=total, stream=io.StringIO())
    bar.close()
    bar.close()
