"""The cluster's network: a namespace for the control plane and one per real node, joined by a bridge.

Rather than touching the machine's network, the process that starts a cluster (the e2e session, the dev cluster)
moves itself into a fresh **control-plane namespace** and starts the control plane there (children inherit the
namespace). That namespace holds `lo`, a bridge `kestrel0` with the control plane's address 10.250.0.2/24 (the API
server and CoreDNS listen there) and no route to anything outside it, so no traffic can leave it.

Each **real node** gets a namespace of its own (`<control plane namespace>-node-<i>`): a veth pair whose outer end is
a port of the bridge and whose inner end `eth0` has the node's address 10.250.0.<10+i>/24, a default route to the
control plane, and the node's pod network 10.88.<i>.0/24 (its CNI bridge, node.py). Pod networks are routed between
nodes without NAT (a route per other node's pod network via that node's address, in every node and in the
control-plane namespace, like a flat L2 network with host-gw routes), so a pod on one node reaches a pod on another
by its IP, and the control plane (the API server calling a webhook, CoreDNS answering) reaches every pod.

The dev cluster (devcluster.py) adds one more veth pair, from the machine's namespace into the control-plane
namespace (10.251.0.1/30 outside, 10.251.0.2/30 inside), so kubectl on the machine reaches the API server; e2e
sessions never do.

Builds that need the package registries (build.sh, build_images.sh) run before the switch, or through
`run_in_host_netns`. Deleting the control-plane namespace and the node namespaces removes every link and route.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
BRIDGE = "kestrel0"
# Private addresses that exist only inside these namespaces, so they cannot clash with the machine's own.
NODE_CIDR_PREFIX = "10.250.0"
CONTROL_PLANE_IP = f"{NODE_CIDR_PREFIX}.2"
FIRST_NODE_HOST = 10  # real node i: 10.250.0.<10+i>
MAX_NODES = 100
# The pods of all real nodes (kube-proxy's clusterCIDR); node i's CNI bridge hands out 10.88.<i>.0/24.
POD_CIDR = "10.88.0.0/16"
NODE_IF = "eth0"  # the node's end of its link, inside its namespace
# The dev cluster's link from the machine's namespace (devcluster.py).
HOST_LINK = "kdev0"
HOST_LINK_OUTSIDE = "10.251.0.1"
HOST_LINK_INSIDE = "10.251.0.2"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def in_netns(name: str, argv: list[str]) -> list[str]:
    """argv run inside the named namespace: nsenter enters it and execs argv (same PID, so it is stopped by it)."""
    return ["nsenter", f"--net={NETNS_DIR / name}", "--", *argv]


def _sysctl_in(name: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    out = subprocess.run(in_netns(name, ["sh", "-c", f"echo {value} > {path}"]), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{key}={value} in {name}: {out.stderr.strip()}")


def node_ip(index: int) -> str:
    return f"{NODE_CIDR_PREFIX}.{FIRST_NODE_HOST + index}"


def node_pod_cidr(index: int) -> str:
    """Node i's share of POD_CIDR: its CNI bridge's range."""
    return str(list(ipaddress.ip_network(POD_CIDR).subnets(new_prefix=24))[index])


@dataclass(frozen=True)
class NodeLink:
    """One real node's namespace and addresses."""

    index: int
    netns: str  # name under /var/run/netns
    ip: str
    pod_cidr: str

    @property
    def host_if(self) -> str:
        """The outer end of its veth pair, a port of the control plane's bridge."""
        return f"kn{self.index}"


@dataclass
class NetNS:
    """The control-plane namespace (`ip netns` can inspect it while the cluster runs) the calling thread has
    entered, and the real nodes' namespaces linked to it."""

    name: str
    node_ip: str = CONTROL_PLANE_IP  # the control plane's address (API server, CoreDNS)
    nodes: dict[int, NodeLink] = field(default_factory=dict)
    host_fd: ClassVar[int] = -1  # the namespace the process came from, while it is inside one

    @classmethod
    def enter_new(cls, name: str) -> NetNS:
        """Create the namespace, move this thread (the only one) into it, bring up lo and the bridge.

        setns() applies to the calling thread; every process it starts afterwards inherits the namespace.
        """
        if os.geteuid() != 0:
            raise PermissionError("a Kestrel cluster creates network namespaces: run it as root")
        _ip("netns", "add", name)
        ns = cls(name=name)
        NetNS.host_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            _ip("link", "set", "lo", "up")
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{ns.node_ip}/24", "dev", BRIDGE)
            # A bridge without ports has no carrier: a veth pair with one end on it gives it one from the start,
            # before any node is linked (these machines' kernels have no `dummy` module).
            _ip("link", "add", f"{BRIDGE}c", "type", "veth", "peer", "name", f"{BRIDGE}p")
            _ip("link", "set", f"{BRIDGE}c", "master", BRIDGE)
            for link in (f"{BRIDGE}c", f"{BRIDGE}p", BRIDGE):
                _ip("link", "set", link, "up")
            # The API server and kubelet want a default route to pick their address; it leads nowhere.
            _ip("route", "add", "default", "dev", BRIDGE)
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:  # this namespace's own sysctl
                f.write("1\n")
        except BaseException:
            ns.leave()
            raise
        return ns

    @classmethod
    def enter_existing(cls, name: str) -> NetNS:
        """Move this thread into a namespace another process created (the dev cluster's, for `down`)."""
        NetNS.host_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        return cls(name=name)

    # -- real nodes
    def node_netns_name(self, index: int) -> str:
        return f"{self.name}-node-{index}"

    def add_node(self, index: int) -> NodeLink:
        """Node i's namespace, linked to the bridge, with routes to and from every other node's pod network."""
        if not 0 <= index < MAX_NODES or index in self.nodes:
            raise ValueError(f"node index {index} is taken or out of range")
        link = NodeLink(index=index, netns=self.node_netns_name(index), ip=node_ip(index),
                        pod_cidr=node_pod_cidr(index))
        _ip("netns", "add", link.netns)
        try:
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", NODE_IF, "netns", link.netns)
            _ip("link", "set", link.host_if, "master", BRIDGE)
            _ip("link", "set", link.host_if, "up")
            inside = ("-n", link.netns)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{link.ip}/24", "dev", NODE_IF)
            _ip(*inside, "link", "set", NODE_IF, "up")
            _ip(*inside, "route", "add", "default", "via", self.node_ip)
            _sysctl_in(link.netns, "net.ipv4.ip_forward", "1")  # the node forwards between its pods and the link
            for other in self.nodes.values():
                _ip(*inside, "route", "add", other.pod_cidr, "via", other.ip)
                _ip("-n", other.netns, "route", "add", link.pod_cidr, "via", link.ip)
            _ip("route", "add", link.pod_cidr, "via", link.ip)
        except BaseException:
            subprocess.run(["ip", "link", "delete", link.host_if], capture_output=True)
            subprocess.run(["ip", "netns", "delete", link.netns], capture_output=True)
            raise
        self.nodes[index] = link
        return link

    def remove_node(self, index: int) -> None:
        """Delete node i's namespace (its processes must be stopped first) and every route to its pods."""
        link = self.nodes.pop(index, None)
        if link is None:
            return
        for other in self.nodes.values():
            subprocess.run(["ip", "-n", other.netns, "route", "delete", link.pod_cidr], capture_output=True)
        subprocess.run(["ip", "route", "delete", link.pod_cidr], capture_output=True)
        subprocess.run(["ip", "link", "delete", link.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", link.netns], capture_output=True)

    def cut_node(self, index: int) -> None:
        """Take node i's link down (its namespace, processes and containers stay): the node is unreachable."""
        _ip("link", "set", self.nodes[index].host_if, "down")

    # -- the dev cluster's way in from the machine
    def link_host(self) -> None:
        """A veth pair from the namespace this process came from into this one (devcluster.py)."""
        if NetNS.host_fd < 0:
            raise RuntimeError("link_host needs the namespace this process came from")
        script = (f"ip link add {HOST_LINK} type veth peer name {HOST_LINK}p netns {self.name}"
                  f" && ip addr add {HOST_LINK_OUTSIDE}/30 dev {HOST_LINK} && ip link set {HOST_LINK} up")
        outside = run_in_host_netns(["sh", "-c", script], capture_output=True, text=True)
        if outside.returncode != 0:
            raise RuntimeError(f"the machine's end of {HOST_LINK}: {outside.stderr.strip()}")
        _ip("addr", "add", f"{HOST_LINK_INSIDE}/30", "dev", f"{HOST_LINK}p")
        _ip("link", "set", f"{HOST_LINK}p", "up")

    def leave(self) -> None:
        """Back to the namespace we came from, then delete the nodes' namespaces and ours (their processes must be
        stopped first)."""
        if NetNS.host_fd >= 0:
            _setns(NetNS.host_fd)
            os.close(NetNS.host_fd)
            NetNS.host_fd = -1
        for link in list(self.nodes.values()):
            subprocess.run(["ip", "netns", "delete", link.netns], capture_output=True)
        self.nodes.clear()
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
