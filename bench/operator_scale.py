"""Operator at scale: 100 ClassificationTrains applied at once against the real local control plane.

Prints, for apply -> MPIJob created: p50/p99 latency over N resources applied in one `kubectl apply`,
against a baseline of single resources applied one at a time in the same run (ratio = how much a burst
slows each resource down), whether every resource got exactly one MPIJob, and the operator's peak RSS
(VmHWM of its process). Run by hand after `bash e2e/build.sh`:

    .venv/bin/python bench/operator_scale.py [--count 100] [--baseline 5]

No MPI controller runs here (MPIJobs are only created, not executed): the figure is our operator's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import cluster as cl  # noqa: E402
from e2e import kestrel_objects as ko  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


class MPIJobWatcher:
    """Records when each MPIJob is first seen (by its owner's name) from a watch on the API server."""

    def __init__(self, cp: cl.ControlPlane, namespace: str) -> None:
        from kubernetes import client, config, watch

        config.load_kube_config(str(cp.kubeconfig))
        self.api = client.CustomObjectsApi()
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self._watch = watch.Watch()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._watch.stream(self.api.list_namespaced_custom_object, "kubeflow.org", "v2beta1",
                                            self.namespace, "mpijobs", timeout_seconds=3600):
                if event["type"] != "ADDED":
                    continue
                now = time.monotonic()
                for ref in event["object"]["metadata"].get("ownerReferences", []):
                    self.seen.setdefault(ref["name"], now)
                    self.count[ref["name"]] = self.count.get(ref["name"], 0) + 1
        except Exception:
            if not self._stopped:  # the stream ends with the API server at shutdown; only earlier is news
                raise

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resources(namespace: str, prefix: str, count: int) -> list[dict]:
    base = ko.in_namespace(ko.example("train.yaml", "ClassificationTrain"), namespace)
    out = []
    for i in range(count):
        doc = ko.in_namespace(base, namespace, f"{prefix}-{i:03d}")
        out.append(doc)
    return out


def wait_all(watcher: MPIJobWatcher, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(n in watcher.seen for n in names):
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--baseline", type=int, default=5, help="resources applied one at a time first")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    folder = cl.bin_dir()
    if missing := cl.missing_binaries(folder):
        print(f"missing {missing} in {folder}: run bash e2e/build.sh first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-"))
    cp = cl.start_control_plane(folder, workdir, gpu_nodes=("gpu-node-0",))
    try:
        cl.apply_crds(cp, cl.mpijob_crd_paths())
        cl.apply_crds(cp, cl.our_crd_paths())
        namespace = "bench"
        cp.kubectl("create", "namespace", namespace)
        sample = resources(namespace, "x", 1)[0]
        ko.prepare(cp, namespace, sample)
        op = cl.Operator(cp=cp, argv=[str(Path(sys.executable).with_name("kestrel-operator")), "run"],
                         env=cp.env(KESTREL_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1"))
        proc = op.start()
        watcher = MPIJobWatcher(cp, namespace)
        time.sleep(2)

        baseline: list[float] = []
        for doc in resources(namespace, "single", args.baseline):
            t0 = time.monotonic()
            cp.apply(doc)
            wait_all(watcher, [doc["metadata"]["name"]], args.timeout)
            baseline.append(watcher.seen[doc["metadata"]["name"]] - t0)

        burst = resources(namespace, "burst", args.count)
        names = [d["metadata"]["name"] for d in burst]
        t0 = time.monotonic()
        cp.apply(burst)
        wait_all(watcher, names, args.timeout)
        latencies = [watcher.seen[n] - t0 for n in names if n in watcher.seen]
        time.sleep(5)  # late duplicates would show up here
        watcher.stop()
        dupes = {n: c for n, c in watcher.count.items() if c > 1}
        rss = peak_rss_mib(proc.pid)

        b50 = statistics.median(baseline)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"baseline (one at a time, n={len(baseline)}): apply->MPIJob p50 {b50:.2f}s")
        print(f"burst ({args.count} in one apply): reconciled {len(latencies)}/{args.count}, duplicates {len(dupes)}")
        print(f"burst apply->MPIJob p50 {p50:.2f}s ({p50 / b50:.1f}x baseline)  p99 {p99:.2f}s ({p99 / b50:.1f}x)")
        print(f"operator peak RSS (VmHWM) {rss:.0f} MiB")
        op.stop()
        return 0 if len(latencies) == args.count and not dupes else 1
    finally:
        cp.stop_all()
        print(f"logs: {workdir}/logs", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
