"""`kestrel-worker`, PID 1 of the rank pods, with real processes and signals (no TensorFlow): a stand-in for sshd
as its command, and stand-in ranks that register as the trainer does (train/rank_registry.py) and take a while to
"checkpoint" after SIGTERM, like a rank that orted started in the pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kestrel_trainer.train import rank_registry

ENTRYPOINT = [sys.executable, "-m", "kestrel_trainer.cli.worker"]

# A rank: registers, then on SIGTERM/SIGUSR1 writes what it got, "checkpoints" for CHECKPOINT_SECONDS and exits 143.
RANK = """
import os, signal, sys, time
from kestrel_trainer.train import rank_registry
events = open(sys.argv[2], "a", buffering=1)
got = []
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, lambda s, f: got.append(s))
path = rank_registry.register(int(sys.argv[1]))
events.write(f"{time.time():.3f} rank{sys.argv[1]} registered\\n")
while not got:
    time.sleep(0.02)
events.write(f"{time.time():.3f} rank{sys.argv[1]} got {signal.Signals(got[0]).name}\\n")
time.sleep(float(os.environ.get("CHECKPOINT_SECONDS", "1.5")))
rank_registry.unregister(path)
events.write(f"{time.time():.3f} rank{sys.argv[1]} exits\\n")
sys.exit(143)
"""

# The command (sshd's stand-in): starts the given ranks as its own children (sshd -> orted -> rank), leaves an
# orphan behind, writes the signals it gets; exits 0 on SIGTERM, 7 on SIGUSR1 after the ranks are gone.
COMMAND = """
import os, signal, subprocess, sys, time
events = open(sys.argv[1], "a", buffering=1)
code = os.environ.get("ORTED_CODE") or os.environ["RANK_CODE"]  # ranks, or orteds that start them
ranks = [subprocess.Popen([sys.executable, "-c", code, r, sys.argv[1]]) for r in sys.argv[2:]]
subprocess.Popen(["sh", "-c", "sleep 1.5 &"])  # sh exits at once: the sleep is an orphan, PID 1's to reap
got = []
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, lambda s, f: got.append(s))
while not got:
    time.sleep(0.02)
events.write(f"{time.time():.3f} command got {signal.Signals(got[0]).name}\\n")
if got[0] == signal.SIGUSR1:  # like mpirun: waits for its ranks, then exits with their code
    for r in ranks:
        r.wait()
    events.write(f"{time.time():.3f} command exits\\n")
    sys.exit(7)
events.write(f"{time.time():.3f} command exits\\n")
sys.exit(0)
"""


# orted's stand-in: starts its rank, and after the rank's exit stays ORTED_SECONDS (reporting the exit status to
# mpirun, in the real one), then exits.
ORTED = """
import os, subprocess, sys, time
open(sys.argv[2], "a", buffering=1).write(f"{time.time():.3f} orted{sys.argv[1]} pid {os.getpid()}\\n")
rank = subprocess.Popen([sys.executable, "-c", os.environ["RANK_CODE"], *sys.argv[1:]])
rank.wait()
time.sleep(float(os.environ["ORTED_SECONDS"]))
open(sys.argv[2], "a", buffering=1).write(f"{time.time():.3f} orted{sys.argv[1]} exits\\n")
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, RANK_CODE=RANK, **{rank_registry.RANKS_DIR_ENV: str(tmp_path / "ranks")})


def _events(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        when, what = line.split(" ", 1)
        out.append((float(when), what))
    return out


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _children(pid: int) -> list[tuple[str, str]]:
    """(name, state) of the processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append((stat[stat.index("(") + 1:stat.rfind(")")], fields[0]))
    return out


def _start(tmp_path: Path, *flags: str, ranks: tuple[str, ...] = ("1",),
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    events = tmp_path / "events.txt"
    events.touch()
    proc = subprocess.Popen([*ENTRYPOINT, *flags, "--", sys.executable, "-c", COMMAND, str(events), *ranks],
                            stderr=subprocess.PIPE, text=True, env={**_env(tmp_path), **(env or {})})
    _wait_for(lambda: sum("registered" in what for _, what in _events(events)) == len(ranks))
    return proc, events


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_sigterm_reaches_the_pods_ranks_and_the_command_stops_only_after_they_have_exited(tmp_path):
    proc, events = _start(tmp_path, ranks=("1", "3"))
    # The orphan was re-parented to the entrypoint (PID 1 in a pod; here its subreaper), which reaps it when it exits.
    _wait_for(lambda: ("sleep", "S") in _children(proc.pid), timeout=5)
    _wait_for(lambda: not [c for c in _children(proc.pid) if c[0] == "sleep"], timeout=10)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # the command's own exit status
    seen = _events(events)
    what = [w for _, w in seen]
    assert {"rank1 got SIGTERM", "rank3 got SIGTERM"} <= set(what), what
    got = max(t for t, w in seen if w.endswith("got SIGTERM") and w.startswith("rank"))
    assert got - sent < 2, seen  # at once
    last_rank_exit = max(t for t, w in seen if w.startswith("rank") and w.endswith("exits"))
    command_got = next(t for t, w in seen if w == "command got SIGTERM")
    assert command_got >= last_rank_exit, seen  # sshd's stand-in kept running while the ranks checkpointed
    assert "sent SIGTERM to rank 1 (pid" in err and "rank 3 (pid" in err, err
    assert "the ranks of this container have exited" in err and "Traceback" not in err, err
    assert rank_registry.registered(str(tmp_path / "ranks")) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_the_command_stops_only_after_its_sessions_have_reported_the_ranks_exit(tmp_path):
    """sshd -> orted -> rank: orted still has to tell mpirun how its rank ended after the rank is gone; sshd (and with
    it the container) stops only once orted has left, else mpirun sees a lost daemon instead of the ranks' 143."""
    proc, events = _start(tmp_path, env={"ORTED_CODE": ORTED, "ORTED_SECONDS": "2"})
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen = dict((w, t) for t, w in _events(tmp_path / "events.txt"))
    assert seen["rank1 exits"] + 1.5 < seen["orted1 exits"] <= seen["command got SIGTERM"], seen
    assert "python's sessions have ended" in err, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_session_that_never_ends_holds_the_command_only_for_linger_seconds(tmp_path):
    proc, events = _start(tmp_path, "--linger", "1", env={"ORTED_CODE": ORTED, "ORTED_SECONDS": "3600"})
    proc.send_signal(signal.SIGTERM)
    try:
        _wait_for(lambda: "command exits" in [w for _, w in _events(events)], timeout=30)
    finally:  # orted is left behind (in a pod, the container's end takes it), holding stderr open: ended here
        orted = next(int(w.rsplit(" ", 1)[1]) for _, w in _events(events) if w.startswith("orted1 pid"))
        os.kill(orted, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen = dict((w, t) for t, w in _events(events))
    assert "orted1 exits" not in seen, seen
    assert 0.9 < seen["command got SIGTERM"] - seen["rank1 exits"] < 10, seen
    assert "still open 1 s after the ranks exited (--linger)" in err, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_child_signal_goes_to_the_command_at_once_and_its_exit_status_is_the_entrypoints(tmp_path):
    """The launcher's way: mpirun gets SIGUSR1 at once (it forwards it to every rank) and is never sent SIGTERM;
    the entrypoint exits with mpirun's exit status."""
    proc, events = _start(tmp_path, "--child-signal", "SIGUSR1")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    seen = _events(events)
    what = [w for _, w in seen]
    assert "command got SIGUSR1" in what and "command got SIGTERM" not in what, what
    command_got = next(t for t, w in seen if w == "command got SIGUSR1")
    rank_exit = next(t for t, w in seen if w == "rank1 exits")
    assert command_got < rank_exit, seen  # not after the ranks: at once
    assert "sending SIGUSR1 to python" in err and "exited with status 7" in err, err


def test_a_stale_registration_is_never_signalled(tmp_path):
    """A record whose process is gone, or whose pid now names another process (its start time differs), is skipped:
    a reused pid must not get the stop signal."""
    folder = tmp_path / "ranks"
    folder.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (folder / str(other.pid)).write_text(f"{other.pid} 1 0\n")  # start time 1: not this process
        (folder / "999999999").write_text("999999999 5 1\n")
        assert rank_registry.registered(str(folder)) == []
        proc = subprocess.Popen([*ENTRYPOINT, "--ranks-dir", str(folder), "--", "sleep", "30"],
                                stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: ("sleep", "S") in _children(proc.pid))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err  # sleep ended by the SIGTERM it was sent
        assert "no trainer rank runs in this container" in err, err
        assert other.poll() is None  # untouched
    finally:
        other.kill()
        other.wait()


def test_user_errors_are_one_line(tmp_path):
    from kestrel_trainer.cli.worker import PROG
    from kestrel_trainer.spec.contract import WORKER_ENTRYPOINT

    assert PROG == WORKER_ENTRYPOINT  # the name the operator renders is the one it answers to
    none = subprocess.run(ENTRYPOINT, capture_output=True, text=True)
    assert none.returncode == 2 and none.stderr.strip().splitlines() == [
        "kestrel-worker: error: give the command to run after --, e.g. kestrel-worker -- /usr/sbin/sshd -De"]
    missing = subprocess.run([*ENTRYPOINT, "--", str(tmp_path / "no-such-sshd")], capture_output=True, text=True)
    assert missing.returncode == 127, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "cannot start" in missing.stderr, missing.stderr
    bad = subprocess.run([*ENTRYPOINT, "--child-signal", "SIGKILL", "--", "true"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a signal it can forward: SIGKILL" in bad.stderr, bad.stderr
