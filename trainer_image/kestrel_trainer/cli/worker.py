"""`kestrel-worker [--child-signal SIG] -- COMMAND [ARG...]`: PID 1 of the trainer's multi-rank pods.

The operator starts worker containers as `kestrel-worker -- /usr/sbin/sshd -De ...` and a multi-rank launcher as
`kestrel-worker --child-signal SIGUSR1 -- mpirun ...` (kestrel_trainer.spec.contract: why SIGUSR1). It

- runs COMMAND as its child and exits with its exit status (128 + N when a signal N ended it);
- reaps every process that becomes its child: orphans are re-parented to PID 1, which must wait for them or
  they stay zombies (outside a container, where it is not PID 1, it makes itself their subreaper);
- on SIGTERM (Kubernetes deleting, evicting or preempting the pod) or SIGINT sends SIGTERM to the trainer ranks
  running in this container (train/rank_registry.py), which then stop with every other rank at one step and
  checkpoint (train/callbacks.py `Preemption`); with --child-signal it sends COMMAND that signal at once, else it
  sends COMMAND SIGTERM once those ranks have exited (sshd must keep their sessions up until then). A second
  SIGTERM or SIGINT sends COMMAND SIGTERM at once. Once the ranks have exited, COMMAND's own processes (sshd's
  session and orted, which still has to report its rank's exit status to mpirun) are given up to --linger seconds
  to leave first: killed sooner, mpirun sees a lost daemon instead of the ranks' exit 143. Kubernetes' SIGKILL at
  the end of the pod's terminationGracePeriodSeconds still ends everything: the operator sets it long enough for a
  checkpoint.

Standard library only (and the trainer's stdlib-only registry and contract): it stays small for the pod's life.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

from kestrel_trainer.train import rank_registry

PROG = "kestrel-worker"  # contract.WORKER_ENTRYPOINT (not imported first: it loads protobuf; see main)
STOP_REQUESTS = (signal.SIGTERM, signal.SIGINT)
POLL_SECONDS = 0.2
LINGER_SECONDS = 15.0  # default --linger: how long COMMAND's children may outlive the stopped ranks
_requests = [0]  # stop requests received, counted from the first moment of main()


def _count_request(signum: int, frame: object) -> None:
    _requests[0] += 1


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _signal_number(name: str) -> int:
    name = name.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    number = getattr(signal, name, None)
    if not isinstance(number, signal.Signals) or number in (signal.SIGKILL, signal.SIGSTOP):
        raise argparse.ArgumentTypeError(f"not a signal it can forward: {name}")
    return int(number)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="PID 1 of a trainer pod: runs COMMAND, reaps orphans, and on SIGTERM asks the "
                               "trainer ranks in this container to checkpoint and stop before COMMAND stops.")
    parser.add_argument("--child-signal", type=_signal_number, default=None, metavar="SIG",
                        help="send COMMAND this signal as soon as a stop is requested (e.g. SIGUSR1 for mpirun, "
                             "which forwards it to every rank); default: SIGTERM once this container's ranks "
                             "have exited")
    parser.add_argument("--linger", type=float, default=LINGER_SECONDS, metavar="SECONDS",
                        help="after this container's ranks have stopped, wait up to SECONDS for COMMAND's own "
                             f"children (sshd's session, orted) to exit before COMMAND gets SIGTERM (default "
                             f"{LINGER_SECONDS:.0f})")
    parser.add_argument("--ranks-dir", default=None,
                        help=f"where the ranks register (default: ${rank_registry.RANKS_DIR_ENV} or "
                             f"{rank_registry.DEFAULT_RANKS_DIR})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return parser


def _become_subreaper() -> None:
    """Outside a container (tests, a shell) orphans of COMMAND go to this process, as they do to a pod's PID 1."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def live_descendants(pid: int) -> list[int]:
    """The processes below `pid` that have not exited (zombies left out), from /proc; [] where there is none."""
    parents: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        fields = rank_registry.live_stat(int(entry))  # None: exited meanwhile, or a zombie
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(parents.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, ()))
    return found


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


class Supervisor:
    """COMMAND's life and the stop sequence; `run` returns the exit status."""

    def __init__(self, command: Sequence[str], child_signal: Optional[int], ranks_dir: str,
                 linger: float = LINGER_SECONDS) -> None:
        self.command = list(command)
        self.name = os.path.basename(self.command[0])
        self.child_signal = child_signal
        self.ranks_dir = ranks_dir
        self.child = 0
        self.child_status: Optional[int] = None
        self.handled = 0  # stop requests acted on
        self.stopping: list[rank_registry.RegisteredRank] = []  # the ranks asked to stop, until they exit
        self.asked_ranks = 0
        self.stop_started = 0.0
        self.child_terminated = False  # COMMAND was sent SIGTERM
        self.linger = linger
        self.ranks_gone: Optional[float] = None  # when this container's ranks were seen gone

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in STOP_REQUESTS:
            signal.signal(sig, _count_request)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so that SIGCHLD wakes the loop
        _become_subreaper()
        try:
            proc = subprocess.Popen(self.command)  # handlers go back to the defaults at exec; the mask is unchanged
        except OSError as err:
            say(f"error: cannot start {self.command[0]}: {err.strerror or err}")
            return 127 if isinstance(err, FileNotFoundError) else 126
        proc.returncode = 0  # the loop below reaps it with waitpid(-1): Popen must never wait for it itself
        self.child = proc.pid
        while self.child_status is None:
            select.select([wake_r], [], [], POLL_SECONDS)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            self._reap()
            if self.child_status is None:
                self._act()
        status = _exit_status(self.child_status)
        if self.handled:
            say(f"{self.name} exited with status {status}, {time.monotonic() - self.stop_started:.1f} s after the "
                "stop request")
        return status

    def _reap(self) -> None:
        """Wait for every child that has exited: COMMAND, and orphans re-parented to this process."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child_status = status

    def _act(self) -> None:
        if _requests[0] > self.handled:
            first = self.handled == 0
            self.handled = _requests[0]
            if first:
                self._ask_ranks()
                if self.child_signal is not None:
                    self._signal_child(self.child_signal)
            elif not self.child_terminated:
                say("stop requested again")
                self._terminate_child()
        if self.handled and self.child_signal is None and not self.child_terminated:
            self.stopping = [r for r in self.stopping if rank_registry.running(r)]
            if self.stopping:
                return
            now = time.monotonic()
            if self.ranks_gone is None:
                self.ranks_gone = now
                if self.asked_ranks:
                    say(f"the ranks of this container have exited, {now - self.stop_started:.1f} s after the stop "
                        "request")
            if not self.asked_ranks:
                self._terminate_child()
            elif not live_descendants(self.child):
                say(f"{self.name}'s sessions have ended, {now - self.ranks_gone:.1f} s after the ranks")
                self._terminate_child()
            elif now - self.ranks_gone >= self.linger:
                say(f"{self.name}'s sessions are still open {self.linger:.0f} s after the ranks exited (--linger)")
                self._terminate_child()

    def _ask_ranks(self) -> None:
        self.stop_started = time.monotonic()
        for r in rank_registry.registered(self.ranks_dir):
            try:
                os.kill(r.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            self.stopping.append(r)
        self.asked_ranks = len(self.stopping)
        if self.stopping:
            say("stop requested: sent SIGTERM to " + ", ".join(f"rank {r.rank} (pid {r.pid})" for r in self.stopping)
                + " to checkpoint and stop")
        else:
            say("stop requested: no trainer rank runs in this container")

    def _signal_child(self, sig: int) -> None:
        say(f"sending {signal.Signals(sig).name} to {self.name} (pid {self.child})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, sig)

    def _terminate_child(self) -> None:
        self.child_terminated = True
        self._signal_child(signal.SIGTERM)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # First: as a container's PID 1, a signal without a handler is dropped, and Kubernetes sends SIGTERM only once.
    for sig in STOP_REQUESTS:
        signal.signal(sig, _count_request)
    from kestrel_trainer.spec.contract import error_line
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print(error_line(PROG, "give the command to run after --, e.g. kestrel-worker -- /usr/sbin/sshd -De"),
              file=sys.stderr)
        return 2
    return Supervisor(command, args.child_signal, args.ranks_dir or rank_registry.ranks_dir(), args.linger).run()


if __name__ == "__main__":
    sys.exit(main())
