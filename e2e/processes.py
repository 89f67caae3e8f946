"""Processes of the e2e cluster: start-up waits, stopping by PID, ports and listening sockets (from /proc).

Every port is one the OS handed out, every process is stopped by its own PID, and a child is asked to die with
the test process (a killed pytest leaves no etcd or API server behind).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ControlPlaneError(RuntimeError):
    """A component did not come up; the message names it and where its log is."""


def free_port() -> int:
    """A loopback port free right now (the small race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


@dataclass
class Process:
    """A process we started: with its Popen handle, or adopted by PID from a state file by another process (the dev
    cluster's `down`), in which case `argv0` guards against a PID the kernel has since given to someone else."""

    name: str
    popen: subprocess.Popen[bytes] | None
    log: Path
    adopted_pid: int = 0
    argv0: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else self.adopted_pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            fields = Path(f"/proc/{self.adopted_pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{self.adopted_pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return fields[0] != "Z" and (not self.argv0 or cmdline[0].decode(errors="replace") == self.argv0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _wait(self, timeout: float) -> None:
        if self.popen is not None:
            self.popen.wait(timeout=timeout)
            return
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, timeout)
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to this PID, then SIGKILL if it has not gone within timeout."""
        if not self.alive():
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            self._wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self._wait(timeout)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL with no grace: used to crash a component on purpose."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self._wait(15)


def listening_addresses(pid: int) -> set[str]:
    """`ip:port` of every TCP socket process `pid` listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add(f"{ip}:{int(hex_port, 16)}")
    return found


def die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the test process dies, so a killed pytest
    (a CI timeout, SIGKILL) leaves no etcd or API server behind. Best effort: no-op where prctl is absent."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25,
    proc: Process | None = None,
) -> None:
    """Poll check() until true; fail early if proc died, with its log tail in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ControlPlaneError(
                f"{proc.name} exited with {proc.popen.returncode if proc.popen else '?'} while waiting for {what}; "
                f"log {proc.log}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet is any error; the timeout reports it
            pass
        time.sleep(interval)
    tail = f"; log {proc.log}:\n{proc.log_tail()}" if proc is not None else ""
    raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
