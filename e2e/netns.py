"""The e2e session's own network namespace: every server the suite starts listens inside it.

The real node needs a non-loopback address (kubelet refuses a loopback --node-ip, `kubectl logs` needs
the node's address) and its pods must reach the API server from the CNI bridge. Rather than touching the
machine's network, the test process moves itself into a fresh namespace that holds only `lo` and a veth pair
(both ends inside) with a private address, and starts everything from there (children inherit the
namespace). The namespace has no route to anything outside it, so no traffic can leave it; it is deleted at
the end.

Builds that need the package registries (build.sh, build_images.sh) run before the switch, or through
`run_in_host_netns`.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass
from typing import Any, ClassVar

CLONE_NEWNET = 0x40000000
NODE_IF = "kestrel0"
# A /24 the session's node and API server use; the pod bridge (cni.py) and Service range are separate.
# Private addresses that exist only inside the namespace, so they cannot clash with the machine's own.
NODE_CIDR_PREFIX = "10.250.0"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


@dataclass
class NetNS:
    """A named namespace (`ip netns` can inspect it while the suite runs) the calling thread has entered."""

    name: str
    node_ip: str
    host_fd: ClassVar[int] = -1  # the namespace the session came from, while it is inside one

    @classmethod
    def enter_new(cls, name: str) -> NetNS:
        """Create the namespace, move this thread (pytest's only one) into it, bring up lo and the node address.

        setns() applies to the calling thread; every process it starts afterwards inherits the namespace.
        """
        if os.geteuid() != 0:
            raise PermissionError("the e2e suite creates a network namespace: run it as root")
        _ip("netns", "add", name)
        ns = cls(name=name, node_ip=f"{NODE_CIDR_PREFIX}.2")
        NetNS.host_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            _ip("link", "set", "lo", "up")
            # A veth pair with both ends in the namespace (these machines' kernels have no `dummy` module):
            # the node's address on one end, the other end only gives it a carrier.
            _ip("link", "add", NODE_IF, "type", "veth", "peer", "name", f"{NODE_IF}p")
            _ip("addr", "add", f"{ns.node_ip}/24", "dev", NODE_IF)
            _ip("link", "set", f"{NODE_IF}p", "up")
            _ip("link", "set", NODE_IF, "up")
            # The API server and kubelet want a default route to pick their address; it leads nowhere.
            _ip("route", "add", "default", "dev", NODE_IF)
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:  # this namespace's own sysctl
                f.write("1\n")
        except BaseException:
            ns.leave()
            raise
        return ns

    def leave(self) -> None:
        """Back to the namespace we came from, then delete ours (its processes must be stopped first)."""
        if NetNS.host_fd >= 0:
            _setns(NetNS.host_fd)
            os.close(NetNS.host_fd)
            NetNS.host_fd = -1
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def run_in_host_netns(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run(argv) in the namespace the session came from (for steps that download packages):
    nsenter gets our saved handle on it as an inherited fd (/proc/1/ns/net is not readable here)."""
    fd = NetNS.host_fd
    if fd < 0:
        return subprocess.run(argv, **kwargs)
    return subprocess.run(["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv], pass_fds=(fd,), **kwargs)


def current_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino
