"""Real Kubernetes nodes for the e2e suite and the dev cluster: containerd + runc + CNI bridge, kubelet, kube-proxy,
each node in its own network namespace (netns.py), plus the cluster's CoreDNS.

Everything runs as plain processes next to the control plane of cluster.py:
- node i lives in the namespace `<control plane namespace>-node-<i>` with address 10.250.0.<10+i> on the control
  plane's bridge and its own pod network 10.88.<i>.0/24, routed to every other node's (netns.py); its containerd,
  kubelet and kube-proxy run there (`nsenter`, same PID), with their own root, state, socket and log folders under
  the node's folder.
- containerd v2 (daemon, runc shim and ctr built by build.sh from the Go module: the runtime Kubernetes 1.36
  supports) with Debian's runc and CNI bridge + host-local plugins: pods get addresses on the node's bridge.
- kubelet v1.36.3 (built by build.sh), authenticated to the API server with a client certificate from the
  e2e CA (system:node:<name>, Node authorizer), serving its own API with x509 client auth + Webhook
  authorization (the API server presents its kubelet-client certificate).
- kube-proxy v1.36.3 per node (iptables mode, in the node's namespace): the `kubernetes` Service VIP reaches the
  API server from pods, as on a real cluster.
- CoreDNS (built by build.sh with the kubernetes plugin), one for the cluster, on the control plane's address: every
  kubelet's clusterDNS, so the MPI Operator's hostfile names (<job>-worker-N.<job>.<ns>.svc) resolve to pod IPs.
Images are imported into each node's containerd (`ctr images import`), or pulled from the session's OCI registry
(registry.py, on the control plane's address) with a Pod's imagePullSecret: each containerd trusts the e2e CA for
that registry through its certs.d hosts.toml (`registry_hosts`). Every real node is tainted and
labelled alike, so only pods that ask for real nodes land there (on any of them), and kwok's fake pods never do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from e2e import cluster as cl
from e2e import netns
from e2e import registry as registry_mod
from e2e.netns import NetNS, NodeLink

NODE_NAME_PREFIX = "real-node-"
NODE_NAME = f"{NODE_NAME_PREFIX}0"  # the first real node
NODE_LABEL = "kestrel.dev/node"
NODE_LABEL_VALUE = "real"
NODE_TAINT_KEY = "kestrel.dev/real-node"
# What a pod adds to run on the real node (and only there).
NODE_SELECTOR = {NODE_LABEL: NODE_LABEL_VALUE}
NODE_TOLERATIONS = [{"key": NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
POD_CIDR = netns.POD_CIDR  # all real nodes' pods; node i's bridge has its /24 of it
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINERD_NAMESPACE = "k8s.io"
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "containerd", "containerd-shim-runc-v2", "ctr")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")  # the processes of one node, in start order
# Debian packages the node needs (installed by e2e/run.sh; checked here so a missing one is named).
DEBIAN_TOOLS = {"runc": "runc", "iptables": "iptables", "nsenter": "util-linux"}


class NodeError(RuntimeError):
    """The real node could not be brought up; the message says which part and where its log is."""


def missing_tools() -> list[str]:
    missing = [f"{tool} (apt: {pkg})" for tool, pkg in DEBIAN_TOOLS.items() if shutil.which(tool) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (apt: containernetworking-plugins)")
    return missing


def node_name(index: int) -> str:
    return f"{NODE_NAME_PREFIX}{index}"


@dataclass
class RealNode:
    cp: cl.ControlPlane
    name: str
    link: NodeLink
    dir: Path
    containerd_sock: Path = field(init=False)
    sandbox_image: str = ""
    # e2e: registered with the taint NODE_TAINT_KEY, so only pods that ask for a real node land there (the kwok nodes
    # take the rest). The dev cluster has no kwok nodes and leaves its nodes untainted.
    tainted: bool = True

    def __post_init__(self) -> None:
        self.containerd_sock = self.dir / "containerd" / "containerd.sock"

    @property
    def ip(self) -> str:
        return self.link.ip

    @property
    def netns(self) -> str:
        return self.link.netns

    def process_name(self, component: str) -> str:
        """Its components' names among the cluster's processes (and their logs: logs/<name>.log)."""
        return f"{component}-{self.name}"

    def process(self, component: str) -> cl.Process | None:
        return self.cp.processes.get(self.process_name(component))

    def start(self, component: str, argv: list, **kwargs) -> cl.Process:
        return self.cp.start(self.process_name(component), argv, netns=self.netns, **kwargs)

    # -- containerd
    def ctr(self, *args: str, timeout: float = 600) -> str:
        # A unix socket is a file: ctr reaches it from any namespace.
        out = subprocess.run(
            [str(self.cp.bin / "ctr"), "--address", str(self.containerd_sock), "-n", CONTAINERD_NAMESPACE, *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if out.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def image_refs(self) -> set[str]:
        return set(self.ctr("images", "list", "-q").split())

    def load(self, image: Image) -> float:
        """`ctr images import` an OCI archive (skipped when already there); returns the seconds it took."""
        if image.ref in self.image_refs():
            return 0.0
        start = time.monotonic()
        self.ctr("images", "import", str(image.archive))
        if image.ref not in self.image_refs():
            raise NodeError(f"imported {image.archive} but containerd has no {image.ref}: {sorted(self.image_refs())}")
        return time.monotonic() - start

    def logs(self) -> dict[str, Path]:
        return {c: p.log for c in NODE_COMPONENTS if (p := self.process(c)) is not None}


def _cni_conflist(node: RealNode, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ipam = {"type": "host-local", "ranges": [[{"subnet": node.link.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
            # Its own record of handed-out addresses (default: /var/lib/cni/networks, shared by every node).
            "dataDir": str(node.dir / "cni-ipam")}
    conf = {
        "cniVersion": "1.0.0",
        "name": "kestrel-e2e",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": ipam},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (folder / "10-kestrel-e2e.conflist").write_text(json.dumps(conf, indent=2))


def registry_hosts(node: RealNode, folder: Path) -> Path:
    """containerd's certs.d for the session's registry (registry.py, HOST:PORT on the control plane's address): a
    hosts.toml that pulls over https and verifies its certificate against the e2e CA, as a user's node is set up for
    a private registry. Credentials are not here: the kubelet passes each Pod's imagePullSecret."""
    host = registry_mod.host_of(node.cp.address)
    (folder / host).mkdir(parents=True, exist_ok=True)
    (folder / host / "hosts.toml").write_text(f"""server = "https://{host}"

[host."https://{host}"]
  capabilities = ["pull", "resolve"]
  ca = "{node.cp.pki['ca.crt']}"
""")
    return folder


def _containerd_config(node: RealNode) -> Path:
    """containerd 2.x configuration (version 3: the CRI plugin is split into cri.v1.images/runtime)."""
    base = node.dir / "containerd"
    cni_conf = base / "cni"
    _cni_conflist(node, cni_conf)
    images, runtime = 'plugins."io.containerd.cri.v1.images"', 'plugins."io.containerd.cri.v1.runtime"'
    text = f"""version = 3
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{node.containerd_sock}"
[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"
[{images}]
  snapshotter = "overlayfs"
[{images}.registry]
  config_path = "{registry_hosts(node, base / 'certs.d')}"
[{images}.pinned_images]
  sandbox = "{node.sandbox_image}"
[{runtime}]
  # These machines run containers without AppArmor or SELinux, with a capped oom_score_adj (real-node.md).
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{runtime}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{runtime}.cni]
  bin_dirs = ["{CNI_BIN_DIR}"]
  conf_dir = "{cni_conf}"
"""
    path = base / "config.toml"
    path.write_text(text)
    return path


def start_containerd(node: RealNode) -> None:
    config = _containerd_config(node)
    # containerd finds its shim (containerd-shim-runc-v2, built with it) on PATH: ours first.
    env = node.cp.env(PATH=f"{node.cp.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = node.start("containerd", [node.cp.bin / "containerd", "--config", config], env=env)
    cl.wait_for("containerd socket", lambda: bool(node.ctr("version", timeout=5)), timeout=60, proc=proc)


def _kubeconfig_for(cp: cl.ControlPlane, path: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": cp.server,
                                                 "certificate-authority": str(cp.pki["ca.crt"])}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def start_kubelet(node: RealNode) -> None:
    cp = node.cp
    kdir = node.dir / "kubelet"
    kdir.mkdir(parents=True, exist_ok=True)
    cert, key = cl.issue_client_cert(cp.pki, f"kubelet-{node.name}", f"system:node:{node.name}", ["system:nodes"])
    kubeconfig = _kubeconfig_for(cp, kdir / "kubeconfig", cert, key, f"system:node:{node.name}")
    resolv = kdir / "resolv.conf"
    resolv.write_text("")  # pods get only the cluster DNS; nothing of the machine's resolver leaks in
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": cl.free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": cl.free_port(),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(cp.pki["ca.crt"])}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_sock}",
        "cgroupDriver": "cgroupfs",
        # These machines: cgroup v1 controllers, no systemd, swap allowed, a shared root file system.
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "clusterDNS": [cp.address],  # CoreDNS, on the control plane's address
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        # Not the shared /var/log/pods: a kubelet deletes log folders of pods it does not know, which would
        # be another session's (another suite or bench run on the same machine).
        "podLogsDir": str(kdir / "pod-logs"),
        "registerWithTaints": [{"key": NODE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}] * node.tainted,
        "serializeImagePulls": False,
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }
    config_path = kdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # Webhook authn/authz: the kubelet asks the API server (TokenReview, SubjectAccessReview) who calls it
    # and whether they may; delegating like that is what system:auth-delegator grants.
    cp.kubectl("create", "clusterrolebinding", "kestrel-e2e-nodes-auth-delegator",
               "--clusterrole=system:auth-delegator", "--group=system:nodes", check=False)
    proc = node.start("kubelet", [
        cp.bin / "kubelet", f"--config={config_path}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={kdir / 'root'}", f"--cert-dir={kdir / 'pki'}", f"--hostname-override={node.name}",
        f"--node-ip={node.ip}", f"--node-labels={NODE_LABEL}={NODE_LABEL_VALUE}", "--v=1",
    ])

    def ready() -> bool:
        conds = cp.get("node", node.name).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    cl.wait_for(f"node {node.name} Ready", ready, timeout=120, interval=1, proc=proc)


def start_kube_proxy(node: RealNode) -> None:
    cp = node.cp
    pdir = node.dir / "kube-proxy"
    pdir.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cp.kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node.name,
        "bindAddress": node.ip,
        "healthzBindAddress": f"127.0.0.1:{cl.free_port()}",
        "metricsBindAddress": f"127.0.0.1:{cl.free_port()}",
        "conntrack": {"maxPerCore": 0},  # leave the kernel's conntrack sysctls alone
        "iptables": {"localhostNodePorts": False},
    }
    config_path = pdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = node.start("kube-proxy", [cp.bin / "kube-proxy", f"--config={config_path}", "--v=1"])

    def vip_programmed() -> bool:
        out = subprocess.run(netns.in_netns(node.netns, ["iptables-save", "-t", "nat"]), capture_output=True,
                             text=True).stdout
        return cl.SERVICE_VIP in out

    cl.wait_for("kube-proxy: the kubernetes Service VIP in iptables", vip_programmed, timeout=60, interval=1,
                proc=proc)


def _corefile(cp: cl.ControlPlane, health: int, ready: int) -> str:
    return f""".:53 {{
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {cp.kubeconfig}
        pods insecure
        ttl 5
    }}
}}
"""


def start_cluster_dns(cp: cl.ControlPlane) -> None:
    """The cluster's CoreDNS in the control plane's namespace, answering on its address (every kubelet's clusterDNS).
    Started once; a second call does nothing."""
    if "coredns" in cp.processes and cp.processes["coredns"].alive():
        return
    ddir = cp.workdir / "coredns"
    ddir.mkdir(parents=True, exist_ok=True)
    health, ready_port = cl.free_port(), cl.free_port()
    corefile = ddir / "Corefile"
    corefile.write_text(_corefile(cp, health, ready_port))
    proc = cp.start("coredns", [cp.bin / "coredns", "-conf", corefile, "-dns.port", "53"], cwd=ddir)

    def ready() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=2) as resp:  # noqa: S310
            return resp.status == 200

    cl.wait_for("CoreDNS /ready (kubernetes plugin synced)", ready, timeout=60, proc=proc)


def start_real_node(cp: cl.ControlPlane, ns: NetNS, sandbox: Image, index: int = 0,
                    images: tuple[Image, ...] = (), tainted: bool = True) -> RealNode:
    """Real node `index` (name real-node-<index>): its namespace linked to the control plane's, containerd (+ the
    sandbox image and `images`) -> kubelet (Ready) -> kube-proxy. The cluster's CoreDNS is started first if it does
    not run yet. On a failure the node's processes are stopped and its namespace removed."""
    missing = missing_tools() + [b for b in NODE_BINARIES if not (cp.bin / b).exists()]
    if missing:
        raise NodeError(f"the real node needs: {', '.join(missing)} (e2e/run.sh installs and builds them)")
    start_cluster_dns(cp)
    link = ns.add_node(index)
    name = node_name(index)
    node = RealNode(cp=cp, name=name, link=link, dir=cp.workdir / "nodes" / name, sandbox_image=sandbox.ref,
                    tainted=tainted)
    node.dir.mkdir(parents=True, exist_ok=True)
    try:
        start_containerd(node)
        for image in (sandbox, *images):
            node.load(image)
        start_kubelet(node)
        start_kube_proxy(node)
    except BaseException:
        stop_real_node(node, ns)
        raise
    return node


def start_real_nodes(cp: cl.ControlPlane, ns: NetNS, sandbox: Image, count: int, first: int = 0,
                     images: tuple[Image, ...] = (), tainted: bool = True) -> list[RealNode]:
    """Real nodes first .. first+count-1, one after the other (each Ready before the next starts)."""
    nodes: list[RealNode] = []
    try:
        for index in range(first, first + count):
            nodes.append(start_real_node(cp, ns, sandbox, index, images, tainted))
    except BaseException:
        for node in reversed(nodes):
            stop_real_node(node, ns)
        raise
    return nodes


# ------------------------------------------------------------------------------------------------- images

BUILD_IMAGES = cl.REPO_ROOT / "scripts" / "build_images.sh"


@dataclass(frozen=True)
class Image:
    ref: str  # localhost/kestrel-NAME:VERSION
    archive: Path  # OCI archive for `ctr images import`


def image_archives() -> Path:
    """Where the images' OCI archives go: KESTREL_IMAGE_ARCHIVES, else ~/.cache/kestrel-images/archives."""
    return Path(os.environ.get("KESTREL_IMAGE_ARCHIVES") or Path.home() / ".cache" / "kestrel-images" / "archives")


def images(names: list[str]) -> dict[str, Image]:
    """build_images with the script KESTREL_BUILD_IMAGES names (e.g. a worktree's copy being written), else ours,
    saving into image_archives(): what the e2e fixtures and the dev cluster use."""
    return build_images(names, image_archives(), Path(os.environ.get("KESTREL_BUILD_IMAGES") or BUILD_IMAGES))


def build_images(names: list[str], save_dir: Path, script: Path = BUILD_IMAGES) -> dict[str, Image]:
    """scripts/build_images.sh --only NAMES --save DIR, run in the machine's network namespace (its podman
    builds reach Debian's and PyPI's registries); cached by its inputs, so a warm call takes seconds."""
    if not script.exists():
        raise NodeError(f"{script} is missing: it builds the images the real node runs")
    out = netns.run_in_host_netns(["bash", str(script), "--only", ",".join(names), "--save", str(save_dir)],
                                  capture_output=True, text=True)
    if out.returncode != 0:
        raise NodeError(f"{script.name} exited {out.returncode}:\n{out.stderr[-3000:]}")
    images: dict[str, Image] = {}
    ref = ""
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["image"]:
            ref = parts[1]
        elif parts[:1] == ["archive"] and ref:
            name = ref.rsplit("/", 1)[-1].split(":", 1)[0].removeprefix("kestrel-")
            images[name] = Image(ref=ref, archive=Path(parts[1]))
    absent = [n for n in names if n not in images]
    if absent:
        raise NodeError(f"{script.name} printed no image/archive for {absent}:\n{out.stdout}")
    return images


# ---------------------------------------------------------------------------------------------- teardown

def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    return mounts


def _kill_tasks(node: RealNode) -> list[str]:
    """SIGKILL every container containerd runs for this node; returns their ids."""
    tasks = node.ctr("tasks", "list", "-q", timeout=30).split()
    for task in tasks:
        subprocess.run([str(node.cp.bin / "ctr"), "--address", str(node.containerd_sock), "-n", CONTAINERD_NAMESPACE,
                        "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
    return tasks


def _shims(node: RealNode) -> list[int]:
    """PIDs of the runc shims this node's containerd started (each names its containerd's socket in -address)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"containerd-shim-runc-v2") and str(node.containerd_sock).encode() in argv:
            pids.append(int(proc.name))
    return pids


def lose_real_node(node: RealNode, ns: NetNS) -> list[str]:
    """The node dies, as a machine that loses power: first its link goes down (nothing it sends arrives any more, so
    its peers see no connection close), then every container's processes, kube-proxy, the kubelet, containerd and
    the runc shims are SIGKILLed; nothing tells the API server. The pods' objects stay bound to the node until the
    control plane gives up on it (NotReady, then eviction). Returns the containers killed. (A kubelet stopped alone
    would leave its containers running and reachable: that is a control-plane partition, not a lost node.)"""
    ns.cut_node(node.link.index)
    containerd = node.process("containerd")
    tasks = _kill_tasks(node) if containerd is not None and containerd.alive() else []
    for component in ("kube-proxy", "kubelet", "containerd"):
        proc = node.process(component)
        if proc is not None:
            proc.kill()
    for pid in _shims(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return tasks


def stop_real_node(node: RealNode, ns: NetNS | None = None, timeout: float = 60, forget: bool = False) -> list[str]:
    """Leave nothing behind: the node's pods deleted through the API (kubelet stops their sandboxes and
    unmounts their volumes; forced when its kubelet no longer runs), then kube-proxy, kubelet, any task containerd
    still runs, containerd, any mount left under the node's folder (so removing the temp dir can never reach through
    a volume mount into a hostPath), and, given `ns`, the node's network namespace; `forget` deletes its Node object
    too (a node removed for good). Returns what had to be forced, for the log."""
    cp, forced = node.cp, []
    selector = f"spec.nodeName={node.name}"
    kubelet = node.process("kubelet")
    if kubelet is not None and kubelet.alive():
        cp.kubectl("delete", "pods", "-A", f"--field-selector={selector}", "--wait=false", "--grace-period=1",
                   check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = cp.kubectl("get", "pods", "-A", f"--field-selector={selector}", "-o", "name", check=False)
            if out.returncode == 0 and not out.stdout.strip():
                break
            time.sleep(1)
        else:
            forced.append("pods still on the node after the grace period")
    else:
        out = cp.kubectl("delete", "pods", "-A", f"--field-selector={selector}", "--force", "--grace-period=0",
                         check=False)
        if out.stdout.strip():
            forced.append(f"pods of a node without kubelet: {out.stdout.strip()}")
    for component in ("kube-proxy", "kubelet"):
        proc = node.process(component)
        if proc is not None:
            proc.stop()
    containerd = node.process("containerd")
    if containerd is not None and containerd.alive():
        forced += [f"task {t}" for t in _kill_tasks(node)]
        containerd.stop()
    for pid in _shims(node):  # a containerd killed earlier (a lost node) left its shims
        forced.append(f"shim {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # The kubelet bind-mounts its root dir onto itself; anything else left here is a pod's volume.
    for point in sorted(_mounts_under(node.dir), key=len, reverse=True):
        if "/pods/" in point:
            forced.append(f"umount {point}")
        subprocess.run(["umount", "-l", point], capture_output=True)
    for component in NODE_COMPONENTS:
        cp.processes.pop(node.process_name(component), None)
    if forget:
        cp.kubectl("delete", "node", node.name, "--wait=false", check=False)
    if ns is not None:
        ns.remove_node(node.link.index)
    return forced
