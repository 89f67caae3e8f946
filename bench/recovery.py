"""What a fault costs a running ClassificationTrain: the work lost and the time until it trains again.

One run of this script starts the e2e cluster with two real nodes (the same functions as e2e/conftest.py's
fixtures: components.start_control_plane, the MPI Operator, our operator, node.start_real_nodes; the workspace of
e2e/real_runs.py) and injects the two faults of issue 28, one after the other, each into its own 2-rank run (gpus 0,
numProcesses 2, 4 epochs, batches of 4 per rank: 20 steps per epoch on 160 real Fashion-MNIST images, as
e2e/test_real_faults.py):
- (b) worker pod 1 deleted (`kubectl delete pod`) in the middle of epoch 2: its SIGTERM reaches rank 1 through the
  pod's entrypoint, the ranks stop after one step, rank 0 writes a mid-epoch checkpoint, the operator starts
  attempt 2, which resumes from it;
- (c) real-node-1 lost in the middle of epoch 2 (node.lose_real_node: its link cut, then its containers, kubelet,
  containerd and shims SIGKILLed): the node controller marks it unreachable, the pods' bounded toleration
  (trainer.nodeLostTolerationSeconds, the operator's default) runs out, they are evicted, the attempt ends NodeLost
  and attempt 2 runs on real-node-0, resuming from the newest checkpoint.

For each it prints:
- work lost: training steps redone = the steps attempt 1 had done (its rank 0's progress lines "epoch E/M step S/T",
  its stop line "rank 0 stops after step S of epoch E", its epoch lines; for a node lost, which leaves no stop line,
  an estimate from the time into epoch 2 and attempt 2's seconds per step), in the launcher's log, read with
  `kubectl logs -f --timestamps` while it runs) minus the steps attempt 2 says were done ("resuming from ...: N epochs
  and M steps done"), counted in steps of ceil(train images / (batch x ranks)) per epoch (the data folder's own
  count); the checkpoint interval (one epoch: the trainer checkpoints every epoch; the run folder's checkpoint names
  are listed) for comparison. Goal: lost work <= the checkpoint interval.
- recovery: from the fault to training again (attempt 2's Keras "Epoch E/M" line after its "resuming from" line,
  by the container runtime's timestamp: the ranks' stdout is Open MPI's pty, so the trainer shows Keras' progress
  bar, whose steps reach the log only when an epoch ends; the first progress report, status.progress.updateTime of
  attempt 2, is printed too), split into fault -> pod gone (b: the pod object deleted; c: the node's pods
  evicted), -> attempt ended (status records attempt 1's failure), -> attempt 2's MPIJob, -> its pods running,
  -> resumed (checkpoint loaded), -> training again. Goal: training again < 60 s after the pod is gone. Pod and status
  marks come from polling the API (one `kubectl get` per round, about a second apart on a loaded machine).

Run by hand as root after `bash e2e/build.sh`, with the images' archives built (scripts/build_images.sh --save;
KESTREL_IMAGE_ARCHIVES / KESTREL_BUILD_IMAGES as for the e2e suite). It enters a network namespace of its own and
stops everything it started by PID at the end (nodes, their mounts, the namespaces). About 15-25 minutes on 2 busy
cores:

    .venv/bin/python bench/recovery.py [--only b|c]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import cluster as cl  # noqa: E402
from e2e import node as node_mod  # noqa: E402
from e2e import real_runs  # noqa: E402
from e2e.netns import NetNS  # noqa: E402

EPOCHS = 4
BATCH = 4  # per rank, as e2e/test_real_faults.py: 20 steps per epoch on 160 images and 2 ranks
RANKS = 2
ROLE = "training.kubeflow.org/job-role"
GOAL_RECOVERY_S = 60.0
STEP_RE = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+)")  # PlainProgress (stdout not a terminal)
KERAS_EPOCH_RE = re.compile(r"^Epoch (\d+)/\d+")  # Keras' progress bar (ranks' stdout is Open MPI's pty)
BAR_RE = re.compile(r"(\d+)/(\d+) \[")
EPOCH_RE = re.compile(r"epoch (\d+)/\d+: loss .*, ([0-9.]+) s -> ")
STOP_RE = re.compile(r"rank 0 stops after step (\d+) of epoch (\d+)")
RESUME_RE = re.compile(r"resuming from (\S+) \(.*?\): (\d+) epochs(?: and (\d+) steps)? done")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def ts(value: str) -> float:
    """An RFC 3339 timestamp of `kubectl logs --timestamps` (nanoseconds) as seconds since the epoch."""
    head, _, frac = value.rstrip("Z").partition(".")
    base = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def resource(ws: real_runs.Workspace, name: str) -> dict:
    """real_runs' ClassificationTrain with the batch of e2e/test_real_faults.py (more steps per epoch)."""
    body = real_runs.train_resource(ws, name, epochs=EPOCHS, processes=RANKS)
    spec = body["spec"]["experimentSpec"]
    assert "batch_size_per_gpu: 16" in spec and "learning_rate: 0.05" in spec, spec
    body["spec"]["experimentSpec"] = (spec.replace("batch_size_per_gpu: 16", f"batch_size_per_gpu: {BATCH}")
                                      .replace("learning_rate: 0.05", "learning_rate: 0.02"))
    return body


class LauncherLogs:
    """`kubectl logs -f --timestamps` of every launcher pod of a run, each into its own file as it runs (the operator
    deletes a failed attempt's pods, and a lost node's kubelet no longer serves its logs)."""

    def __init__(self, cp: cl.ControlPlane, namespace: str, folder: Path) -> None:
        self.cp, self.namespace, self.folder = cp, namespace, folder
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: dict[str, list[Path]] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def poll(self, pods: list[dict]) -> None:
        for pod in pods:
            name = pod["metadata"]["name"]
            if pod["metadata"]["labels"].get(ROLE) != "launcher" or not pod["status"].get("containerStatuses"):
                continue
            proc = self.procs.get(name)
            if proc is not None and (proc.poll() is None or self._got(name)):
                continue  # following, or followed to the end
            path = self.folder / f"{name}.{len(self.files.get(name, []))}.log"
            self.files.setdefault(name, []).append(path)
            with open(path, "wb") as out:
                self.procs[name] = subprocess.Popen(
                    [str(self.cp.bin / "kubectl"), "logs", "-f", "--timestamps", name, "-n", self.namespace],
                    stdout=out, stderr=subprocess.DEVNULL, env=self.cp.env())

    def _got(self, name: str) -> bool:
        return any(p.stat().st_size for p in self.files.get(name, []))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        """(timestamp, text) of the launcher pods whose name starts with prefix (the longest copy of each)."""
        out: list[tuple[float, str]] = []
        for name, paths in self.files.items():
            if not name.startswith(prefix):
                continue
            text = max((p.read_text(errors="replace") for p in paths), key=len)
            for line in text.splitlines():
                stamp, _, rest = line.partition(" ")
                try:
                    out.append((ts(stamp), rest))
                except ValueError:
                    continue
        return sorted(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def steps_of(lines: list[tuple[float, str]], spe: int) -> int:
    """The most steps of the run a launcher's log shows done: progress lines, Keras' progress bar (its segments
    arrive as one line when the epoch ends), stop and epoch lines."""
    best, epoch = 0, 0
    for _, text in lines:
        if m := KERAS_EPOCH_RE.search(text):
            epoch = int(m.group(1))
        bars = [int(n) for n, _ in BAR_RE.findall(text)]
        if bars and epoch:
            best = max(best, (epoch - 1) * spe + max(bars))
        if m := STEP_RE.search(text):
            best = max(best, (int(m.group(1)) - 1) * spe + int(m.group(2)))
        if m := STOP_RE.search(text):
            best = max(best, (int(m.group(2)) - 1) * spe + int(m.group(1)))
        if m := EPOCH_RE.search(text):
            best = max(best, int(m.group(1)) * spe)
    return best


@dataclass
class Outcome:
    fault: str
    spe: int
    done_before: int = 0
    resumed: int = 0
    resumed_from: str = ""
    fault_step: str = ""  # where attempt 1 was when the fault came
    marks: dict[str, float] = field(default_factory=dict)  # seconds after the fault
    phase: str = ""
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    load_at_fault: str = ""
    note: str = ""
    estimate: int | None = None  # steps done at the fault, from the time into epoch 2
    per_step: float = 0.0
    exact: bool = True  # done_before from a stop line, not the estimate

    @property
    def before(self) -> int:
        """Steps attempt 1 had done: what its log shows (a stop line is exact), else the time-based estimate."""
        if self.estimate is not None and self.done_before < self.estimate:
            return self.estimate
        return self.done_before

    @property
    def lost(self) -> int:
        return self.before - self.resumed

    def recovery_after_gone(self) -> float | None:
        again, gone = self.marks.get("training again"), self.marks.get("pod gone")
        return None if again is None or gone is None else again - gone


def snapshot(cp: cl.ControlPlane, namespace: str) -> tuple[list[dict], list[dict], dict]:
    out = cp.kubectl("get", "pods,mpijobs.kubeflow.org,classificationtrains", "-n", namespace, "-o", "json",
                     check=False)
    if out.returncode != 0:
        return [], [], {}
    items = json.loads(out.stdout)["items"]
    pods = [i for i in items if i["kind"] == "Pod"]
    jobs = [i for i in items if i["kind"] == "MPIJob"]
    trains = {i["metadata"]["name"]: i for i in items if i["kind"] == "ClassificationTrain"}
    return pods, jobs, trains


def run_fault(cp: cl.ControlPlane, ns: NetNS, ws: real_runs.Workspace, nodes: list[node_mod.RealNode],
              fault: str, workdir: Path, delay: float) -> Outcome:
    name = {"b": "pod-deleted", "c": "node-lost"}[fault]
    train_images = sum(1 for p in (ws.data_dir / "train").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    spe = math.ceil(train_images / (BATCH * RANKS))
    result = Outcome(fault=fault, spe=spe)
    first = f"{name}-train-g1"
    second = f"{first}-a2"
    logs = LauncherLogs(cp, ws.namespace, workdir / "launcher-logs")
    ws.make_results_folder(name)
    cp.apply(resource(ws, name))
    say(f"({fault}) applied {name}: {train_images} train images, {spe} steps per epoch, {EPOCHS} epochs")
    try:
        # The fault comes in the middle of epoch 2: `delay` seconds after Keras' "Epoch 2/4" line (the progress
        # bar's steps reach the log only when an epoch ends, so the line that starts epoch 2 is the mark).
        deadline = time.monotonic() + 1200
        epoch2_at = None
        while True:
            pods, _, trains = snapshot(cp, ws.namespace)
            logs.poll(pods)
            lines = logs.lines(first + "-launcher")
            steps = steps_of(lines, spe)
            if epoch2_at is None:
                epoch2_at = next((t for t, text in lines if re.match(r"Epoch 2/", text)), None)
            if steps >= 2 * spe:
                raise RuntimeError(f"{name}: epoch 2 ended before the fault (lengthen the epoch or shorten --delay)")
            if epoch2_at is not None and time.time() >= epoch2_at + delay:
                break
            if trains.get(name, {}).get("status", {}).get("phase") in ("Succeeded", "Failed"):
                raise RuntimeError(f"{name} ended before the fault: {trains[name]['status']}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not reach epoch 2 in 20 minutes")
            time.sleep(0.3)
        mine = [p for p in pods if p["metadata"]["name"].startswith(first + "-")]
        result.load_at_fault = load()
        if fault == "b":
            victim = next(p["metadata"]["name"] for p in mine if p["metadata"]["name"] == f"{first}-worker-1")
            gone_names = {victim}
            fault_at = time.time()
            cp.kubectl("delete", "pod", victim, "-n", ws.namespace, "--wait=false")
            result.note = f"deleted {victim}"
        else:
            lost = nodes[1]
            gone_names = {p["metadata"]["name"] for p in mine if p["spec"].get("nodeName") == lost.name}
            if not gone_names:
                raise RuntimeError(f"no pod of {first} on {lost.name}: "
                                   f"{[(p['metadata']['name'], p['spec'].get('nodeName')) for p in mine]}")
            fault_at = time.time()
            killed = node_mod.lose_real_node(lost, ns)
            result.note = f"lost {lost.name} with {sorted(gone_names)} ({len(killed)} containers killed)"
        into = fault_at - epoch2_at
        result.fault_step = f"fault {into:.1f} s after the line starting epoch 2"
        say(f"({fault}) fault {into:.1f} s into epoch 2: {result.note}; load {result.load_at_fault}")

        marks = result.marks
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            pods, jobs, trains = snapshot(cp, ws.namespace)
            now = time.time() - fault_at
            logs.poll(pods)
            obj = trains.get(name, {})
            st = obj.get("status", {})
            names = {p["metadata"]["name"]: p for p in pods}
            if "pod gone" not in marks:
                if fault == "b" and not gone_names & set(names):
                    marks["pod gone"] = now
                if fault == "c" and any(names[n]["metadata"].get("deletionTimestamp") for n in gone_names & set(names)):
                    marks["pod gone"] = now
            failures = [f for r in st.get("runs", []) if r.get("runHash") == st.get("runHash")
                        for f in r.get("attemptFailures", [])]
            if "attempt ended" not in marks and (failures or int(st.get("attempt") or 1) >= 2):
                marks["attempt ended"] = now
            if "next MPIJob created" not in marks and any(j["metadata"]["name"] == second for j in jobs):
                marks["next MPIJob created"] = now
            attempt2 = [p for p in pods if p["metadata"]["name"].startswith(second + "-")
                        and not p["metadata"].get("deletionTimestamp")]
            roles = {p["metadata"]["labels"].get(ROLE) for p in attempt2 if p["status"].get("phase") == "Running"}
            workers = [p for p in attempt2 if p["metadata"]["labels"].get(ROLE) == "worker"
                       and p["status"].get("phase") == "Running"]
            if "next pods running" not in marks and len(workers) == RANKS and "launcher" in roles:
                marks["next pods running"] = now
            progress = st.get("progress") or {}
            if "first progress update" not in marks and progress.get("run") == second and progress.get("updateTime"):
                marks["first progress update"] = ts(progress["updateTime"]) - fault_at
            if st.get("phase") in ("Succeeded", "Failed"):
                result.phase, result.attempts = st["phase"], int(st.get("attempt") or 0)
                result.reasons = [f"{f.get('attempt')}:{f.get('reason')}" for f in failures]
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{name} did not finish within 25 minutes after the fault: marks {marks}")
        time.sleep(2)  # the last log lines
        pods, _, _ = snapshot(cp, ws.namespace)
        logs.poll(pods)
        lines1 = logs.lines(first + "-launcher-")
        result.done_before = steps_of(lines1, spe)
        lines2 = logs.lines(second + "-launcher-")
        for stamp, text in lines2:
            if m := RESUME_RE.search(text):
                result.resumed_from = Path(m.group(1)).name
                result.resumed = int(m.group(2)) * spe + int(m.group(3) or 0)
                marks["resumed (checkpoint loaded)"] = stamp - fault_at
                after = [s for s, t in lines2 if s >= stamp and (KERAS_EPOCH_RE.search(t) or STEP_RE.search(t))]
                if after:
                    marks["training again"] = after[0] - fault_at
                break
        # Steps of epoch 2 done when the fault came, from the time since its start and the seconds per step of the
        # whole epochs attempt 2 ran after its first (the first traces the graph): the only count for a node lost
        # (no stop line; the partial epoch's progress bar never reaches the log).
        seconds = [float(m.group(2)) for _, t in lines2 if (m := EPOCH_RE.search(t))][1:]
        if seconds:
            per_step = sum(seconds) / len(seconds) / spe
            result.estimate = spe + min(spe - 1, int(into / per_step))
            result.per_step = per_step
        weights = ws.results_of(name) / "runs"
        result.checkpoints = sorted(p.name for p in weights.rglob("weights/*.tlt"))
        if result.phase != "Succeeded":
            result.note += f"; ended {result.phase}: {obj.get('status', {}).get('message')}"
    finally:
        logs.stop()
    return result


def report(results: list[Outcome], loads: dict[str, str]) -> None:
    print()
    seen = ", ".join(f"{k} {v}" for k, v in loads.items())
    print(f"machine: {os.cpu_count()} cores, load average (1/5/15 min): {seen}")
    labels = {"b": "(b) worker pod deleted in epoch 2 of 4", "c": "(c) node lost in epoch 2 of 4 (2 real nodes)"}
    order = ["pod gone", "attempt ended", "next MPIJob created", "next pods running", "resumed (checkpoint loaded)",
             "training again", "first progress update"]
    for r in results:
        print(f"\n{labels[r.fault]}: {r.note}; load at the fault {r.load_at_fault}")
        print(f"  end: {r.phase} after {r.attempts} attempts (failures {', '.join(r.reasons) or 'none'})")
        print(f"  steps per epoch {r.spe} (ceil(train images / ({BATCH} x {RANKS} ranks))); {r.fault_step}")
        est = "?" if r.estimate is None else f"{r.estimate} ({r.per_step:.2f} s per step)"
        print(f"  attempt 1's log shows {r.done_before} steps done; estimated from the time into epoch 2: {est}")
        print(f"  attempt 1 had done {r.before} steps (epoch {r.before // r.spe + 1} step {r.before % r.spe}); "
              f"attempt 2 resumed from {r.resumed_from or '?'} with {r.resumed} steps done")
        print(f"  work lost (steps redone): {r.lost}; checkpoint interval: {r.spe} steps (1 epoch)")
        print(f"  checkpoints in the run folder: {' '.join(r.checkpoints)}")
        print("  seconds after the fault (step: since the mark before):")
        prev = 0.0
        for key in sorted((k for k in order if k in r.marks), key=lambda k: r.marks[k]):
            print(f"    {key:30s} {r.marks[key]:7.1f}   (+{r.marks[key] - prev:.1f})")
            prev = r.marks[key]
        after = r.recovery_after_gone()
        if after is not None:
            print(f"    pod gone -> training again   {after:7.1f}")
    print("\ngoals")
    print(f"  {'fault':5s} {'lost steps':>10s} {'interval':>9s} {'lost<=interval':>15s} "
          f"{'fault->training':>16s} {'gone->training':>15s} {'< 60 s':>7s}")
    for r in results:
        after = r.recovery_after_gone()
        total = r.marks.get("training again")
        print(f"  ({r.fault})   {r.lost:10d} {r.spe:9d} {'met' if 0 <= r.lost <= r.spe else 'NOT met':>15s} "
              f"{'?' if total is None else f'{total:.1f} s':>16s} {'?' if after is None else f'{after:.1f} s':>15s} "
              f"{'?' if after is None else 'met' if after < GOAL_RECOVERY_S else 'NOT met':>7s}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("b", "c"), help="inject one fault only")
    parser.add_argument("--delay", type=float, default=5.0,
                        help="seconds after epoch 2 starts (in the launcher's log) to inject the fault")
    args = parser.parse_args()
    faults = [args.only] if args.only else ["b", "c"]

    folder = cl.bin_dir()
    missing = cl.missing_binaries(folder) + [b for b in (*node_mod.NODE_BINARIES, "mpi-operator")
                                             if not (folder / b).exists()]
    if missing:
        sys.exit(f"missing binaries {missing}: run `bash e2e/build.sh` first")
    operator_exe = Path(sys.executable).with_name("kestrel-operator")
    if not operator_exe.exists():
        sys.exit(f"{operator_exe} is not installed (pip install -e .[operator])")
    images = node_mod.images(["pause", "trainer"])  # as the e2e fixtures (conftest._image)
    loads = {"start": load()}
    say(f"load {loads['start']}; images {images['pause'].ref}, {images['trainer'].ref}")

    workdir = Path(tempfile.mkdtemp(prefix="kestrel-recovery-"))
    ns = NetNS.enter_new(f"kestrel-bench-{os.getpid()}")
    nodes: list[node_mod.RealNode] = []
    results: list[Outcome] = []
    cp = None
    try:
        started = time.monotonic()
        cp = cl.start_control_plane(folder, workdir, gpu_nodes=(), address=ns.node_ip)
        cl.apply_crds(cp, cl.mpijob_crd_paths(cp.bin))
        cl.apply_crds(cp, cl.our_crd_paths())
        cl.start_mpi_operator(cp)
        op = cl.Operator(cp=cp, argv=[str(operator_exe), "run"],
                         env=cp.env(KESTREL_GPUS_PER_NODE="8", KESTREL_DEFAULT_IMAGE=images["trainer"].ref,
                                    KESTREL_RESYNC_SECONDS="5", KESTREL_LOG_LEVEL="DEBUG", PYTHONUNBUFFERED="1"))
        op.start()
        nodes = node_mod.start_real_nodes(cp, ns, images["pause"], count=2, images=(images["trainer"],))
        namespace = "recovery"
        real_runs.create_namespace(cp, namespace)
        ws = real_runs.make_workspace(cp, namespace, workdir / "ws", images["trainer"].ref)
        say(f"cluster with {len(nodes)} real nodes up in {time.monotonic() - started:.0f} s; load {load()}")
        for fault in faults:
            results.append(run_fault(cp, ns, ws, nodes, fault, workdir, args.delay))
            loads[f"after ({fault})"] = load()
            say(f"({fault}) done: {results[-1].phase}, marks {results[-1].marks}")
    except BaseException:
        say(f"failed; logs kept in {workdir}/logs")
        if results:
            report(results, loads)
        raise
    finally:
        for node in reversed(nodes):
            forced = node_mod.stop_real_node(node, ns, forget=True)
            if forced:
                say(f"{node.name} teardown had to force: {forced}")
        if cp is not None:
            cp.stop_all()
        ns.leave()
    report(results, loads)
    cl.remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
