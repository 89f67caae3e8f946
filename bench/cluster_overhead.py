"""What the cluster path costs: the same 2-rank training run on the host and through `kubectl apply`.

One run of this script does both, on the same real Fashion-MNIST subset and the same tiny spec
(e2e/real_runs.py, tests/train/conftest.py):
- host: `kestrel train -e SPEC -r RESULTS --num_processes 2` (the trainer starts its 2 Horovod ranks itself);
- cluster: a ClassificationTrain (gpus 0, numProcesses 2) applied with kubectl to the e2e cluster with its real
  node (e2e/node.py): our operator -> the MPI Operator -> launcher + 2 worker pods in containerd -> mpirun
  over ssh -> the same trainer -> status Succeeded.
It prints the wall-clock of each, the difference, and where the difference goes, from the API's own
timestamps (1 s resolution): operator (apply -> MPIJob), pods (MPIJob -> workers running, image already
imported: the import is timed separately), launcher (workers running -> launcher running; the MPI Operator
waits for workers first), run (launcher running -> finished: mpirun + ssh + the trainer, compare with the
host run), status (launcher finished -> resource Succeeded). Goal: overhead < 30 s.

Run by hand as root after `bash e2e/build.sh` (it builds the images with scripts/build_images.sh if needed):

    .venv/bin/python bench/cluster_overhead.py [--per-class 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import cluster as cl  # noqa: E402
from e2e import kestrel_objects as ko  # noqa: E402
from e2e import node as node_mod  # noqa: E402
from e2e import real_runs  # noqa: E402
from e2e.netns import NetNS  # noqa: E402
from tests.train.conftest import TINY_SPEC  # noqa: E402

ROLE = "training.kubeflow.org/job-role"


def ts(value: str) -> float:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def host_run(ws: real_runs.Workspace, root: Path, epochs: int) -> float:
    spec = root / "host-spec.txt"
    spec.write_text(TINY_SPEC.format(data=ws.data_dir, epochs=epochs, mixup=0.0))
    env = dict(os.environ, KESTREL_KEY=ws.key)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec),
                          "-r", str(root / "host-results"), "--num_processes", "2"],
                         capture_output=True, text=True, env=env)
    took = time.monotonic() - start
    if out.returncode != 0:
        sys.exit(f"host run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return took


def container_times(pod: dict) -> tuple[float, float | None]:
    state = pod["status"]["containerStatuses"][0]["state"]
    if "terminated" in state:
        return ts(state["terminated"]["startedAt"]), ts(state["terminated"]["finishedAt"])
    return ts(state["running"]["startedAt"]), None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=real_runs.PER_CLASS)
    parser.add_argument("--epochs", type=int, default=real_runs.EPOCHS)
    args = parser.parse_args()
    real_runs.PER_CLASS = args.per_class

    folder = cl.bin_dir()
    missing = cl.missing_binaries(folder) + [b for b in (*node_mod.NODE_BINARIES, "mpi-operator")
                                             if not (folder / b).exists()]
    if missing:
        sys.exit(f"missing binaries {missing}: run `bash e2e/build.sh` first")
    cache = Path(os.environ.get("KESTREL_E2E_CACHE", Path.home() / ".cache" / "kestrel-e2e")) / "images"
    script = Path(os.environ.get("KESTREL_BUILD_IMAGES") or node_mod.BUILD_IMAGES)
    images = node_mod.build_images(["pause", "trainer"], cache, script)

    workdir = Path(tempfile.mkdtemp(prefix="kestrel-overhead-"))
    ns = NetNS.enter_new(f"kestrel-bench-{os.getpid()}")
    cp = cl.start_control_plane(folder, workdir, gpu_nodes=(), address=ns.node_ip)
    node = None
    try:
        cl.apply_crds(cp, cl.mpijob_crd_paths())
        cl.apply_crds(cp, cl.our_crd_paths())
        cl.start_mpi_operator(cp)
        op = cl.Operator(cp=cp, argv=[str(Path(sys.executable).with_name("kestrel-operator")), "run"],
                         env=cp.env(KESTREL_RESYNC_SECONDS="5", PYTHONUNBUFFERED="1"))
        op.start()
        node = node_mod.start_real_node(cp, ns, images["pause"])
        import_s = node.load(images["trainer"])
        namespace = "overhead"
        real_runs.create_namespace(cp, namespace)
        ws = real_runs.make_workspace(cp, namespace, workdir / "ws", images["trainer"].ref)

        host_s = host_run(ws, workdir, args.epochs)
        resource = real_runs.train_resource(ws, "overhead", epochs=args.epochs)
        seen: dict[str, dict] = {}  # pod name -> its last state seen (the MPI Operator deletes workers at the end)
        stop = threading.Event()

        def watch_pods() -> None:
            while not stop.is_set():
                out = cp.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
                if out.returncode == 0:
                    for pod in json.loads(out.stdout)["items"]:
                        if pod["status"].get("containerStatuses"):
                            seen[pod["metadata"]["name"]] = pod
                stop.wait(1)

        watcher = threading.Thread(target=watch_pods, daemon=True)
        watcher.start()
        applied = time.time()
        final = real_runs.run_to_end(cp, ws, resource, "Succeeded", timeout=900)
        seen_done = time.time()
        cluster_s = final["_elapsed"]
        time.sleep(2)
        stop.set()
        watcher.join()

        job = ko.mpijobs_of(cp, final)[0]
        pods = list(seen.values())
        workers = [p for p in pods if p["metadata"]["labels"].get(ROLE) == "worker"]
        launcher = [p for p in pods if p["metadata"]["labels"].get(ROLE) == "launcher"][-1]
        mpijob_at = ts(job["metadata"]["creationTimestamp"])
        workers_running = max(container_times(p)[0] for p in workers)
        launcher_start, launcher_end = container_times(launcher)
        assert launcher_end is not None
        parts = {
            "operator (apply -> MPIJob created)": mpijob_at - applied,
            "pods (MPIJob -> both workers' containers running)": workers_running - mpijob_at,
            "launcher (workers running -> launcher container running)": launcher_start - workers_running,
            "run (launcher running -> finished: mpirun, ssh, trainer)": launcher_end - launcher_start,
            "status (launcher finished -> resource Succeeded seen)": seen_done - launcher_end,
        }
    finally:
        if node is not None:
            node_mod.stop_real_node(node, ns)
        cp.stop_all()
        ns.leave()
    print(f"data: {args.per_class} images/class/split, {args.epochs} epochs, 2 ranks (CPU)")
    print(f"trainer image import into containerd (once per node, not in the run): {import_s:.1f} s")
    print(f"host    kestrel train --num_processes 2: {host_s:6.1f} s")
    print(f"cluster kubectl apply -> Succeeded:      {cluster_s:6.1f} s")
    print(f"overhead: {cluster_s - host_s:+.1f} s ({cluster_s / host_s:.2f}x the host run); goal < 30 s")
    for what, seconds in parts.items():
        print(f"  {what:60s} {seconds:6.1f} s")
    run_part = parts["run (launcher running -> finished: mpirun, ssh, trainer)"]
    print(f"  (run part minus the host run: {run_part - host_s:+.1f} s)")
    cl.remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
