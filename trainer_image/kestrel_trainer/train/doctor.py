"""`kestrel doctor`: what TensorFlow and Horovod see here, a few training steps on the device a run would use,
and a 2-rank allreduce through the launcher `kestrel train` uses (horovodrun --gloo; NCCL carries it when two
GPUs are there and Horovod has NCCL). One PASS/FAIL/INFO line per check; any FAIL is a non-zero exit.

The day-one check of a GPU cluster (docs/gpu.md): `kestrel doctor --gpus 1` in a pod of the GPU image that holds
a GPU makes "no GPU" a FAIL, and "TensorFlow without CUDA", "Horovod without NCCL" too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.train import devices

RANK_MARK = "doctor-rank "
RANK_FLAG = "--rank-check"  # the hidden flag each allreduce rank runs `kestrel doctor` with
ALLREDUCE_TIMEOUT = 600  # two TensorFlow start-ups on a loaded machine took 120 s here

# The libraries TensorFlow 2.15.1's CUDA build opens by name at start (CUDA 12.2, cuDNN 8; its dso_loader) and
# Horovod's NCCL. The driver's libcuda.so.1 is not in the image: the node's container runtime mounts it.
CUDA_LIBRARIES = ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11", "libcurand.so.10",
                  "libcusolver.so.11", "libcusparse.so.12", "libcudnn.so.8", "libnccl.so.2")
DRIVER_LIBRARY = "libcuda.so.1"
MIN_DRIVER_CUDA = 12020  # cuDriverGetVersion's encoding of 12.2: the toolkit TensorFlow 2.15.1 is built with
# A fresh process opens each name as the dynamic loader resolves it for this environment (LD_LIBRARY_PATH, then
# the loader's cache) and reports the file it mapped (/proc/self/maps), and the driver's CUDA version.
_RESOLVE = r"""
import ctypes, json, os, sys

def mapped():
    with open("/proc/self/maps") as maps:
        return {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}

found = {}
for name in sys.argv[1:]:
    try:
        lib = ctypes.CDLL(name)
    except OSError as err:
        found[name] = {"error": str(err)}
        continue
    stem = name.split(".so")[0] + ".so"
    paths = sorted(p for p in mapped() if os.path.basename(p).startswith(stem))
    entry = {"path": paths[0] if paths else "(mapped under another name)"}
    if name == "libcuda.so.1":
        version = ctypes.c_int(0)
        try:
            entry["cuda"] = version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None
        except AttributeError:
            entry["cuda"] = None
    found[name] = entry
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Check:
    status: str  # PASS, FAIL or INFO
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def _horovod() -> Optional[Any]:
    try:
        import horovod.tensorflow as hvd
    except ImportError:
        return None
    return hvd


def environment(asked: Optional[int], env: Mapping[str, str]) -> tuple[list[Check], int]:
    """What TensorFlow and Horovod are and see; the GPU count a run would use (asked, else what is there)."""
    import tensorflow as tf

    checks = []
    built = tf.test.is_built_with_cuda()
    info = tf.sysconfig.get_build_info()
    cuda = f"CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}" if built else "no CUDA"
    checks.append(Check("INFO", "tensorflow", f"{tf.__version__}, built with {cuda}"))
    if built:
        checks.extend(libraries(env, need_gpu=bool(asked)))
    gpus = tf.config.list_physical_devices("GPU")
    visible = devices.visibility(env)
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        sm = "".join(map(str, details.get("compute_capability", ())))
        names.append(f"{details.get('device_name', gpu.name)} (sm_{sm})")
    checks.append(Check("INFO", "gpus", f"{len(gpus)} visible{': ' + '; '.join(names) if names else ''} ({visible})"))
    try:
        use = devices.resolve(asked, env, len(gpus), built)
        if asked is not None and asked > 0:
            checks.append(Check("PASS", "gpus", f"{asked} asked, {len(gpus)} visible"))
        elif use == 0:
            checks.append(Check("INFO", "gpus", "none used: the checks below run on the CPU"
                                + (" (--gpus 1 makes no GPU a FAIL)" if asked is None else "")))
    except KestrelError as err:
        checks.append(Check("FAIL", "gpus", err.message))
        use = 0
    hvd = _horovod()
    if hvd is None:
        checks.append(Check("FAIL", "horovod", "not installed (scripts/build_horovod.sh): no multi-rank training"))
    else:
        import horovod

        nccl = hvd.nccl_built()
        checks.append(Check("INFO", "horovod", f"{horovod.__version__}, mpi_built {hvd.mpi_built()}, gloo_built "
                            f"{hvd.gloo_built()}, nccl_built {nccl}, cuda_built {hvd.cuda_built()}"))
        if use and not nccl:
            checks.append(Check("FAIL", "horovod", "GPUs in use but Horovod has no NCCL: gradients would be averaged "
                                "through host memory (use the GPU trainer image)"))
    return checks, use


def resolve_libraries(names: Sequence[str], env: Mapping[str, str],
                      run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, dict[str, Any]]:
    """Each name -> {"path": the file the dynamic loader maps for it in `env`} or {"error": why not}; the driver
    also gets "cuda", its CUDA version (cuDriverGetVersion). A fresh process, because the loader reads
    LD_LIBRARY_PATH when a process starts."""
    proc = run([sys.executable, "-c", _RESOLVE, *names], capture_output=True, text=True, env=dict(env), timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {name: {"error": f"the check's process failed: {tail[0]}"} for name in names}
    return json.loads(proc.stdout)


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def libraries(env: Mapping[str, str], need_gpu: bool, names: Sequence[str] = CUDA_LIBRARIES) -> list[Check]:
    """Whether the CUDA, cuDNN and NCCL libraries resolve here (a FAIL names each one that does not), and the
    driver: its path and CUDA version, a FAIL when it is older than 12.2, or missing while GPUs are asked for."""
    found = resolve_libraries([*names, DRIVER_LIBRARY], env)
    where = f"LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')!r}"
    missing = [name for name in names if "path" not in found[name]]
    if missing:
        checks = [Check("FAIL", "libraries", f"{', '.join(missing)} not found ({where}): TensorFlow would see no "
                        "GPU; use the GPU trainer image, or put the libraries' folders on the loader's path")]
    else:
        checks = [Check("PASS", "libraries", f"{len(names)} of {len(names)} resolve: "
                        + ", ".join(f"{name} -> {found[name]['path']}" for name in names))]
    driver = found[DRIVER_LIBRARY]
    capabilities = f"NVIDIA_DRIVER_CAPABILITIES={env.get('NVIDIA_DRIVER_CAPABILITIES', '')!r}"
    if "path" not in driver:
        text = (f"no {DRIVER_LIBRARY}: no NVIDIA driver is mounted in this container ({capabilities} must include "
                f"compute; {where})")
        checks.append(Check("FAIL" if need_gpu else "INFO", "driver", text))
    elif not driver.get("cuda"):
        checks.append(Check("FAIL" if need_gpu else "INFO", "driver",
                            f"{driver['path']} does not answer cuDriverGetVersion: not a usable NVIDIA driver"))
    elif driver["cuda"] < MIN_DRIVER_CUDA:
        checks.append(Check("FAIL", "driver", f"{driver['path']} supports CUDA {_cuda_text(driver['cuda'])}; "
                            f"TensorFlow 2.15.1 needs {_cuda_text(MIN_DRIVER_CUDA)} (upgrade the node's driver)"))
    else:
        checks.append(Check("INFO", "driver", f"{driver['path']}, supports CUDA {_cuda_text(driver['cuda'])}"))
    return checks


def training_steps(use_gpu: bool, steps: int = 5) -> Check:
    """A few SGD steps of a small convnet on a fixed batch, on the GPU a run would use (else the CPU): the loss
    must be finite and fall, and the weights must live on that device."""
    import numpy as np
    import tensorflow as tf

    device = "/GPU:0" if use_gpu else "/CPU:0"
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 16)
    start = time.perf_counter()
    try:
        with tf.device(device):
            tf.keras.utils.set_random_seed(7)
            model = tf.keras.Sequential([
                tf.keras.layers.Input((16, 16, 3)), tf.keras.layers.Conv2D(8, 3, activation="relu"),
                tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(4)])
            model.compile(tf.keras.optimizers.SGD(0.1),
                          tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    except Exception as err:  # a broken CUDA/cuDNN install surfaces here: say what, as a FAIL
        return Check("FAIL", "train", f"{steps} steps on {device}: {type(err).__name__}: {str(err).splitlines()[0]}")
    seconds = time.perf_counter() - start
    placed = model.trainable_weights[0].device
    detail = (f"{steps} steps on {device} (weights on {placed.split('device:')[-1] or placed}) in {seconds:.1f} s, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    kind = "GPU" if use_gpu else "CPU"
    ok = all(np.isfinite(losses)) and losses[-1] < losses[0] and kind in placed.upper()
    return Check("PASS" if ok else "FAIL", "train", detail)


def allreduce(gpus: int, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Check:
    """2 ranks through the trainer's own launcher (horovodrun --gloo) each give rank+1; both must get 3."""
    from kestrel_trainer.train.launcher import _tool, launch_command

    try:
        cmd = launch_command(2, ["doctor", RANK_FLAG, "--gpus", str(gpus)], "gloo")
        cmd[0] = _tool(cmd[0])
    except KestrelError as err:
        return Check("FAIL", "allreduce", err.message)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "HOROVOD_", "PMI_", "PMIX_"))}
    start = time.perf_counter()
    try:
        proc = run(cmd, capture_output=True, text=True, env=env, timeout=ALLREDUCE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Check("FAIL", "allreduce", f"2 ranks did not finish in {ALLREDUCE_TIMEOUT} s")
    seconds = time.perf_counter() - start
    found = [json.loads(m.group(1)) for m in re.finditer(rf"{RANK_MARK}(\{{.*\}})", proc.stdout)]
    if proc.returncode != 0 or len(found) != 2:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check("FAIL", "allreduce", f"horovodrun exit code {proc.returncode}, {len(found)} of 2 ranks "
                     f"answered: {tail[0]}")
    sums = sorted(r["sum"] for r in found)
    device, ops = found[0]["device"], found[0]["ops"]
    ok = sums == [3.0, 3.0] and sorted(r["rank"] for r in found) == [0, 1]
    return Check("PASS" if ok else "FAIL", "allreduce",
                 f"2 ranks over {found[0]['controller']}, sum {sums} (expected 3.0 on both), tensors on {device} "
                 f"({ops}), {seconds:.1f} s")


def rank_check(gpus: int) -> int:
    """One rank of the allreduce (`kestrel doctor --rank-check`, started by horovodrun): its GPU (local rank)
    when the run has 2 or more, else the CPU; prints one marked JSON line."""
    import tensorflow as tf

    hvd = _horovod()
    if hvd is None:
        raise KestrelError("Horovod is not installed", exit_code=2)
    hvd.init()
    physical = tf.config.list_physical_devices("GPU")
    on_gpu = gpus >= 2 and len(physical) > hvd.local_rank()
    if on_gpu:
        tf.config.set_visible_devices([physical[hvd.local_rank()]], "GPU")
    elif physical:
        tf.config.set_visible_devices([], "GPU")
    device = "/GPU:0" if on_gpu else "/CPU:0"
    with tf.device(device):
        value = tf.constant([float(hvd.rank() + 1)])
        total = hvd.allreduce(value, op=hvd.Sum)
    ops = ("NCCL" if hvd.nccl_built() else "no NCCL: host memory") if on_gpu else "CPU tensors: Gloo/MPI"
    controller = "MPI" if hvd.mpi_enabled() else "Gloo" if hvd.gloo_enabled() else "?"
    placed = (total.device or device).split("device:")[-1]
    print(RANK_MARK + json.dumps({"rank": hvd.rank(), "sum": float(total.numpy()[0]), "device": placed,
                                  "ops": ops, "controller": controller}), flush=True)
    return 0


def run_doctor(asked: Optional[int], out: Callable[[str], None] = print) -> int:
    """Every check, one line each as it finishes; 1 if any failed."""
    checks, use = environment(asked, os.environ)
    for check in checks:
        out(check.line())
    for step in (lambda: training_steps(use > 0), lambda: allreduce(use)):
        result = step()
        checks.append(result)
        out(result.line())
    failed = [c for c in checks if c.status == "FAIL"]
    out(f"FAIL doctor: {len(failed)} check(s) failed" if failed else "PASS doctor: all checks passed")
    return 1 if failed else 0
