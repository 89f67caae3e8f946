"""A local Kestrel cluster in one command (scripts/dev-cluster.sh): the e2e suite's own code, left running.

`up [--nodes N] [--kueue]` starts, with the same functions the e2e fixtures call: the control plane (components.py:
etcd, kube-apiserver, controller-manager, scheduler; no kwok nodes), N real nodes (node.py: each its own network
namespace with containerd, kubelet, kube-proxy and a pod network routed to the others; the cluster's CoreDNS), the
real Kubeflow MPI Operator, optionally Kueue (kueue.py), then Kestrel installed with the real helm from
charts/kestrel with the images scripts/build_images.sh built (imported into every node's containerd), and a sample
volume in the namespace `default` (real_runs.make_workspace: a Fashion-MNIST subset on the claim `fashion-data`, a
`results` claim and the key Secret `kestrel-key`), so `kubectl apply -f examples/k8s/train-cpu.yaml` works at once.
The processes outlive the command (no parent-death signal); their PIDs and everything `down` must remove are in
the state file. The machine reaches the API server over a veth pair into the cluster's namespace (netns.HOST_LINK).

`down` stops every process by its PID (after checking the PID still runs the same program), deletes the namespaces,
unmounts what the kubelets mounted and removes the state folder. `status` says what runs.

Names and addresses: namespaces `kestrel-dev` and `kestrel-dev-node-<i>` (e2e sessions use `kestrel-e2e-<pid>`),
the machine's end of the link `kdev0` 10.251.0.1/30; inside, the same 10.250.0.0/24 and 10.88.0.0/16 as every e2e
session, which cannot collide since each lives in its own namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from e2e import cluster as cl
from e2e import netns
from e2e import node as node_mod
from e2e.netns import NetNS

NAME = "kestrel-dev"
STATE_DIR = Path(os.environ.get("KESTREL_DEV_DIR") or Path.home() / ".cache" / "kestrel-dev")
STATE_FILE = "state.json"
HOST_KUBECONFIG = "kubeconfig"
CHART = cl.REPO_ROOT / "charts" / "kestrel"
RELEASE, RELEASE_NAMESPACE = "kestrel", "kestrel-system"
SAMPLE_NAMESPACE = "default"
SAMPLE_PER_CLASS = 100  # real Fashion-MNIST images per class and split: 1,000 each for train, val, test
IMAGES = ("pause", "trainer", "operator")
CONTROLLERS = ("kueue", "mpi-operator", "kube-scheduler", "kube-controller-manager")  # stopped first by `down`


class DevClusterError(RuntimeError):
    pass


def _say(message: str) -> None:
    print(f"dev-cluster: {message}", flush=True)


def _state_path(folder: Path) -> Path:
    return folder / STATE_FILE


def _save_state(folder: Path, cp: cl.ControlPlane, ns: NetNS, nodes: list[node_mod.RealNode]) -> None:
    state = {
        "netns": ns.name,
        "bin": str(cp.bin), "workdir": str(cp.workdir), "address": cp.address, "token": cp.token,
        "apiserver_port": cp.apiserver_port, "pki": {k: str(v) for k, v in cp.pki.items()},
        "processes": [{"name": p.name, "pid": p.pid, "argv0": _program(p), "log": str(p.log)}
                      for p in cp.processes.values()],
        "nodes": [{"index": n.link.index, "name": n.name, "dir": str(n.dir), "sandbox": n.sandbox_image}
                  for n in nodes],
    }
    path = _state_path(folder)
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)


def _program(proc: cl.Process) -> str:
    """The program the PID runs: argv[0], or for a real node's component what nsenter execs (after `--`)."""
    args = [str(a) for a in proc.popen.args] if proc.popen is not None else [proc.argv0]
    return args[args.index("--") + 1] if args[0] == "nsenter" and "--" in args else args[0]


def _load_state(folder: Path) -> tuple[dict, cl.ControlPlane]:
    path = _state_path(folder)
    if not path.exists():
        raise DevClusterError(f"no dev cluster here ({path} is missing)")
    state = json.loads(path.read_text())
    cp = cl.ControlPlane(bin=Path(state["bin"]), workdir=Path(state["workdir"]), token=state["token"],
                         apiserver_port=state["apiserver_port"], pki={k: Path(v) for k, v in state["pki"].items()},
                         address=state["address"], detached=True)
    for p in state["processes"]:
        cp.processes[p["name"]] = cl.Process(p["name"], None, Path(p["log"]), adopted_pid=p["pid"], argv0=p["argv0"])
    return state, cp


def _nodes_of(state: dict, cp: cl.ControlPlane, ns: NetNS) -> list[node_mod.RealNode]:
    nodes = []
    for n in state["nodes"]:
        link = netns.NodeLink(index=n["index"], netns=ns.node_netns_name(n["index"]), ip=netns.node_ip(n["index"]),
                              pod_cidr=netns.node_pod_cidr(n["index"]))
        ns.nodes[link.index] = link
        nodes.append(node_mod.RealNode(cp=cp, name=n["name"], link=link, dir=Path(n["dir"]),
                                       sandbox_image=n["sandbox"], tainted=False))
    return nodes


def _host_kubeconfig(cp: cl.ControlPlane, folder: Path) -> Path:
    """The admin kubeconfig for the machine: the API server at the link's inner address (in its certificate)."""
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://{netns.HOST_LINK_INSIDE}:{cp.apiserver_port}"
    path = folder / HOST_KUBECONFIG
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _helm(cp: cl.ControlPlane, *args: str) -> str:
    home = cp.workdir / "helm-home"
    env = cp.env(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                 HELM_DATA_HOME=str(home / "data"))
    out = subprocess.run([str(cp.bin / "helm"), *args], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise DevClusterError(f"helm {' '.join(args[:2])} exited {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def _install_kestrel(cp: cl.ControlPlane, images: dict[str, node_mod.Image]) -> None:
    operator_repo, operator_tag = images["operator"].ref.rsplit(":", 1)
    trainer_repo, trainer_tag = images["trainer"].ref.rsplit(":", 1)
    values = {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "trainer": {"image": {"repository": trainer_repo, "tag": trainer_tag}},
    }
    path = cp.workdir / "kestrel-values.yaml"
    path.write_text(yaml.safe_dump(values))
    _helm(cp, "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace", "-f", str(path),
          "--wait", "--timeout", "5m")


def up(folder: Path, nodes: int, kueue: bool) -> int:
    if _state_path(folder).exists():
        raise DevClusterError(f"a dev cluster is already up ({_state_path(folder)}): `dev-cluster.sh down` first")
    if subprocess.run(["ip", "netns", "pids", NAME], capture_output=True).returncode == 0 or \
            Path(netns.NETNS_DIR / NAME).exists():
        raise DevClusterError(f"network namespace {NAME} exists without a state file: "
                              f"remove it (`ip netns delete {NAME}`) or run `dev-cluster.sh down`")
    started = time.monotonic()
    bin_folder = cl.bin_dir()
    missing = cl.missing_binaries(bin_folder) + [b for b in ("mpi-operator", "helm")
                                                 if not os.access(bin_folder / b, os.X_OK)]
    if missing:
        raise DevClusterError(f"missing in {bin_folder}: {', '.join(missing)}: run `bash e2e/build.sh` first")
    _say("images (scripts/build_images.sh; cached by their inputs)")
    images = node_mod.images(list(IMAGES))
    folder.mkdir(parents=True, exist_ok=True)
    workdir = folder / "cluster"
    workdir.mkdir(exist_ok=True)
    ns = NetNS.enter_new(NAME)
    cp: cl.ControlPlane | None = None
    started_nodes: list[node_mod.RealNode] = []
    try:
        ns.link_host()
        _say("control plane")
        cp = cl.start_control_plane(bin_folder, workdir, gpu_nodes=(), address=ns.node_ip, detached=True,
                                    bind_address="0.0.0.0", extra_ips=[netns.HOST_LINK_INSIDE])
        _say(f"{nodes} real node(s), importing the images into each")
        started_nodes = node_mod.start_real_nodes(cp, ns, images["pause"], nodes,
                                                  images=(images["trainer"], images["operator"]), tainted=False)
        _save_state(folder, cp, ns, started_nodes)
        _say("MPI Operator")
        cl.apply_crds(cp, cl.mpijob_crd_paths(bin_folder))
        cl.start_mpi_operator(cp)
        if kueue:
            from e2e import kueue as kueue_mod

            _say("Kueue")
            kueue_mod.start(cp)
        _save_state(folder, cp, ns, started_nodes)
        _say("Kestrel (helm install charts/kestrel)")
        _install_kestrel(cp, images)
        _say(f"sample data in namespace {SAMPLE_NAMESPACE}")
        from e2e import real_runs

        real_runs.make_workspace(cp, SAMPLE_NAMESPACE, folder / "sample", images["trainer"].ref,
                                 per_class=SAMPLE_PER_CLASS)
        kubeconfig = _host_kubeconfig(cp, folder)
        _save_state(folder, cp, ns, started_nodes)
    except BaseException:
        _say("start-up failed: stopping what was started")
        for node in reversed(started_nodes):
            node_mod.stop_real_node(node, ns)
        if cp is not None:
            cp.stop_all()
        ns.leave()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    took = time.monotonic() - started
    _say(f"up in {took:.0f} s: {nodes} real node(s), MPI Operator, Kestrel{', Kueue' if kueue else ''}")
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"export PATH={bin_folder}:$PATH   # kubectl {cl.pinned_version('k8s.io/kubernetes')}, helm")
    print("kubectl apply -f examples/k8s/train-cpu.yaml && kubectl get ctrain -w")
    return 0


def down(folder: Path) -> int:
    try:
        state, cp = _load_state(folder)
    except DevClusterError:
        if not (netns.NETNS_DIR / NAME).exists():
            _say("nothing to stop")
            shutil.rmtree(folder, ignore_errors=True)
            return 0
        raise
    ns = NetNS.enter_existing(state["netns"]) if (netns.NETNS_DIR / state["netns"]).exists() else None
    forced: list[str] = []
    # Nothing may start pods again while the nodes' pods are deleted (a Deployment, a Job, an MPIJob would).
    for name in CONTROLLERS:
        if name in cp.processes:
            cp.processes[name].stop()
    if ns is not None:
        for node in reversed(_nodes_of(state, cp, ns)):
            forced += node_mod.stop_real_node(node, ns, timeout=30 if cp.readyz() else 0)
    cp.stop_all()
    if ns is not None:
        ns.leave()
    shutil.rmtree(folder, ignore_errors=True)
    _say(f"stopped {len(state['processes'])} processes, removed {state['netns']} and {folder}"
         + (f" (forced: {len(forced)} items)" if forced else ""))
    return 0


def status(folder: Path) -> int:
    try:
        state, cp = _load_state(folder)
    except DevClusterError as exc:
        _say(str(exc))
        return 1
    running = 0
    for proc in cp.processes.values():
        alive = proc.alive()
        running += alive
        print(f"{proc.name:32s} pid {proc.pid:<8d} {'running' if alive else 'NOT RUNNING'}")
    print(f"{running}/{len(cp.processes)} processes running; KUBECONFIG={folder / HOST_KUBECONFIG}")
    if (netns.NETNS_DIR / state["netns"]).exists():
        out = subprocess.run(netns.in_netns(state["netns"], [str(cp.bin / "kubectl"), "get", "nodes", "-o", "wide"]),
                             capture_output=True, text=True, env=cp.env(), timeout=30)
        print(out.stdout or out.stderr, end="")
    return 0 if running == len(cp.processes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev-cluster.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the cluster and install Kestrel")
    p_up.add_argument("--nodes", type=int, default=1, help="real nodes (default 1)")
    p_up.add_argument("--kueue", action="store_true", help="also run Kueue's controller")
    sub.add_parser("down", help="stop everything and remove its state")
    sub.add_parser("status", help="what runs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, containerd, kubelet)")
    try:
        if args.command == "up":
            if not 1 <= args.nodes <= netns.MAX_NODES:
                parser.error(f"--nodes must be 1..{netns.MAX_NODES}")
            return up(STATE_DIR, args.nodes, args.kueue)
        if args.command == "down":
            return down(STATE_DIR)
        return status(STATE_DIR)
    except (DevClusterError, cl.ControlPlaneError, node_mod.NodeError, cl.KubectlError) as exc:
        print(f"dev-cluster: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
