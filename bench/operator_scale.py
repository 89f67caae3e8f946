"""Operator at scale against a real local API server, in one run: single resources one at a time, a burst
of 100, and 1,000 across 50 namespaces; optionally a kube-apiserver restart in the middle of the 1,000.

The control plane is etcd + kube-apiserver (`--full` adds controller-manager, scheduler and kwok: nothing
here needs them, since no MPI controller runs and no pod is made).

Prints, for apply -> MPIJob created (seen on a cluster-wide watch): p50/p99 of single resources applied one
at a time, p50/p99 of a burst of N in one `kubectl apply` (and its ratio to the single p50, and how long the
apply itself took), and for the big
burst the time until every resource has its MPIJob and its status written, p99, and whether every resource
got exactly one MPIJob; the operator's peak RSS (VmHWM) and peak thread count; and where the time goes:
API requests per resource by verb and resource, from the API server's own `apiserver_request_total`
(diffed around the big burst; includes the controller-manager's few requests on these resources).
Each latency also gets the operator's own share: from the resource first seen on a second watch (stored by
the API server) to its MPIJob, which leaves out the time `kubectl apply` spends on the objects before it.

    .venv/bin/python bench/operator_scale.py [--single 10] [--burst 100] [--big 1000] [--namespaces 50]
        [--restart-apiserver] [--operator-path DIR]

`--operator-path DIR` runs the operator package found in DIR (e.g. an older commit's `operator/` from
`git archive`), so a baseline and the current code are measured back to back on the same machine, which
matters on a shared, noisy one. No MPI controller runs here: MPIJobs are only created, so the figures
are our operator's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import cluster as cl  # noqa: E402
from e2e import kestrel_objects as ko  # noqa: E402

RESOURCES = ("mpijobs", "classificationtrains", "configmaps", "serviceaccounts", "roles", "rolebindings",
             "events", "pods")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


class FirstSeen:
    """Records when each object of one kind is first seen, by a key from its metadata, from a cluster-wide
    watch (re-established after an API server restart)."""

    def __init__(self, cp: cl.ControlPlane, group: str, version: str, plural: str, keys_of) -> None:
        from kubernetes import client, config

        config.load_kube_config(str(cp.kubeconfig))
        self.api = client.CustomObjectsApi()
        self.what = (group, version, plural)
        self.keys_of = keys_of
        self.seen: dict[str, float] = {}
        self.count: Counter[str] = Counter()
        self._uids: set[str] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stopped:
            try:
                self._watch = watch.Watch()
                for event in self._watch.stream(self.api.list_cluster_custom_object, *self.what,
                                                timeout_seconds=3600):
                    meta = event["object"]["metadata"]
                    if event["type"] not in ("ADDED", "MODIFIED") or meta["uid"] in self._uids:
                        continue
                    self._uids.add(meta["uid"])
                    now = time.monotonic()
                    for key in self.keys_of(meta):
                        self.seen.setdefault(key, now)
                        self.count[key] += 1
            except Exception:  # noqa: BLE001 - the API server went away: watch again
                time.sleep(0.5)

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def mpijob_watcher(cp: cl.ControlPlane) -> FirstSeen:
    """MPIJobs, keyed by their owner's namespace/name."""
    return FirstSeen(cp, "kubeflow.org", "v2beta1", "mpijobs",
                     lambda meta: [f"{meta['namespace']}/{ref['name']}" for ref in meta.get("ownerReferences", [])])


def train_watcher(cp: cl.ControlPlane) -> FirstSeen:
    """ClassificationTrains, keyed by their own namespace/name: when the API server stored each one, so
    `MPIJob seen - resource seen` is the operator's own share of apply -> MPIJob, without kubectl's."""
    return FirstSeen(cp, ko.GROUP, "v1alpha1", "classificationtrains",
                     lambda meta: [f"{meta['namespace']}/{meta['name']}"])


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


class ThreadSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.peak = max(self.peak, int(proc_status(self.pid, "Threads")))
            except (OSError, ValueError):
                return
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop = True


_METRIC = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def request_counts(cp: cl.ControlPlane) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource) for the resources the operator touches."""
    import urllib.request

    req = urllib.request.Request(cp.server + "/metrics", headers={"Authorization": f"Bearer {cp.token}"})
    with urllib.request.urlopen(req, context=cp._ssl(), timeout=30) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        if labels.get("resource") in RESOURCES and labels.get("verb") != "WATCH":
            verb = labels["verb"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
            out[(verb, labels["resource"])] += int(float(m.group("value")))
    return out


def resources(namespaces: list[str], prefix: str, count: int) -> list[dict]:
    base = ko.example("train.yaml", "ClassificationTrain")
    return [ko.in_namespace(base, namespaces[i % len(namespaces)], f"{prefix}-{i:04d}") for i in range(count)]


def key(doc: dict) -> str:
    return f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"


def operator_share(watcher: FirstSeen, stored: FirstSeen, keys: list[str]) -> str:
    """p50/p99 of resource stored -> its MPIJob seen: the operator's part of apply -> MPIJob."""
    lat = [watcher.seen[k] - stored.seen[k] for k in keys if k in watcher.seen and k in stored.seen]
    if not lat:
        return "operator's share: no resource seen on both watches"
    return f"operator's share (stored -> MPIJob) p50 {percentile(lat, 50):.2f}s p99 {percentile(lat, 99):.2f}s"


def wait_all(watcher: FirstSeen, keys: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(k in watcher.seen for k in keys):
        time.sleep(0.05)


def statuses_written(cp: cl.ControlPlane, keys: set[str]) -> bool:
    items = cp.get_json("/apis/kestrel.dev/v1alpha1/classificationtrains")["items"]
    done = {f"{t['metadata']['namespace']}/{t['metadata']['name']}" for t in items
            if (t.get("status") or {}).get("mpiJobName")}
    return keys <= done


def apply_in_chunks(cp: cl.ControlPlane, docs: list[dict], chunk: int = 100) -> None:
    import yaml

    for i in range(0, len(docs), chunk):
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs[i:i + chunk]), timeout=900)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=10, help="resources applied one at a time")
    parser.add_argument("--burst", type=int, default=100, help="resources in one apply")
    parser.add_argument("--big", type=int, default=1000, help="resources across --namespaces (0: skip)")
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--restart-apiserver", action="store_true", help="restart it in the middle of --big")
    parser.add_argument("--operator-path", default=None, help="run the operator package from this directory")
    parser.add_argument("--full", action="store_true",
                        help="also run controller-manager, scheduler and kwok (default: etcd + kube-apiserver only; "
                             "no pods are made here)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    folder = cl.bin_dir()
    needed = cl.BINARIES if args.full else cl.API_ONLY_BINARIES
    if missing := [b for b in needed if not os.access(folder / b, os.X_OK)]:
        print(f"missing {missing} in {folder}: run bash e2e/build.sh first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-"))
    cp = (cl.start_control_plane(folder, workdir, gpu_nodes=("gpu-node-0",)) if args.full
          else cl.start_api_only(folder, workdir))
    ok = True
    try:
        cl.apply_crds(cp, cl.mpijob_crd_paths())
        cl.apply_crds(cp, cl.our_crd_paths())
        namespaces = [f"bench-{i:02d}" for i in range(args.namespaces)]
        for ns in ["bench", *namespaces]:
            cp.kubectl("create", "namespace", ns)
        env = cp.env(KESTREL_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        if args.operator_path:
            env["PYTHONPATH"] = os.pathsep.join([str(Path(args.operator_path).resolve()),
                                                 env.get("PYTHONPATH", "")])
        op = cl.Operator(cp=cp, argv=[sys.executable, "-m", "kestrel_operator.cli", "run"], env=env)
        proc = op.start()
        threads = ThreadSampler(proc.pid)
        watcher = mpijob_watcher(cp)
        stored = train_watcher(cp)
        time.sleep(3)
        print(f"operator: {args.operator_path or 'this checkout'}")

        single: list[float] = []
        for doc in resources(["bench"], "single", args.single):
            t0 = time.monotonic()
            cp.apply(doc)
            wait_all(watcher, [key(doc)], args.timeout)
            single.append(watcher.seen[key(doc)] - t0)
        s50, s99 = statistics.median(single), percentile(single, 99)
        print(f"single (one at a time, n={len(single)}): apply->MPIJob p50 {s50:.2f}s p99 {s99:.2f}s; "
              + operator_share(watcher, stored, [key(d) for d in resources(["bench"], "single", args.single)]))

        burst = resources(["bench"], "burst", args.burst)
        t0 = time.monotonic()
        apply_in_chunks(cp, burst)
        burst_applied = time.monotonic() - t0
        wait_all(watcher, [key(d) for d in burst], args.timeout)
        lat = [watcher.seen[key(d)] - t0 for d in burst if key(d) in watcher.seen]
        b50, b99 = percentile(lat, 50), percentile(lat, 99)
        ok &= len(lat) == args.burst
        print(f"burst of {args.burst} in one apply: reconciled {len(lat)}/{args.burst}; apply->MPIJob p50 {b50:.2f}s "
              f"p99 {b99:.2f}s ({b99 / s50:.1f}x the single p50); kubectl apply itself took {burst_applied:.1f}s; "
              + operator_share(watcher, stored, [key(d) for d in burst]))

        if args.big:
            before = request_counts(cp)
            big = resources(namespaces, "big", args.big)
            keys = [key(d) for d in big]
            t0 = time.monotonic()
            if args.restart_apiserver:
                apply_in_chunks(cp, big[: args.big // 2])
                time.sleep(2)
                cl.restart_apiserver(cp, down_seconds=3)
                apply_in_chunks(cp, big[args.big // 2:])
            else:
                apply_in_chunks(cp, big)
            applied = time.monotonic() - t0
            wait_all(watcher, keys, args.timeout)
            all_jobs = time.monotonic() - t0
            lat = [watcher.seen[k] - t0 for k in keys if k in watcher.seen]
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and not statuses_written(cp, set(keys)):
                time.sleep(0.5)
            all_status = time.monotonic() - t0
            after = request_counts(cp)
            restarted = " (kube-apiserver restarted midway)" if args.restart_apiserver else ""
            print(f"{args.big} across {args.namespaces} namespaces{restarted}: applied in {applied:.1f}s; "
                  f"all MPIJobs after {all_jobs:.1f}s, all statuses after {all_status:.1f}s; reconciled "
                  f"{len(lat)}/{args.big}; apply->MPIJob p50 {percentile(lat, 50):.2f}s "
                  f"p99 {percentile(lat, 99):.2f}s; "
                  + operator_share(watcher, stored, keys))
            ok &= len(lat) == args.big
            diff = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
            per = sorted(((v / args.big, k) for k, v in diff.items()), reverse=True)
            print(f"API requests per resource (all components; total {sum(diff.values()) / args.big:.1f}): "
                  + ", ".join(f"{verb} {res} {n:.2f}" for n, (verb, res) in per))

        time.sleep(5)  # late duplicates would show up here
        watcher.stop()
        stored.stop()
        dupes = {n: c for n, c in watcher.count.items() if c > 1}
        ok &= not dupes
        threads.stop()
        print(f"duplicates: {len(dupes)}; operator peak RSS (VmHWM) {proc_status(proc.pid, 'VmHWM') / 1024:.0f} MiB; "
              f"peak threads {threads.peak}")
        op.stop()
        return 0 if ok else 1
    finally:
        cp.stop_all()
        print(f"logs: {workdir}/logs", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
