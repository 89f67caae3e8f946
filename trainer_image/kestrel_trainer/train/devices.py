"""No silent CPU: how many GPUs a task was asked for, what TensorFlow sees, and the one line when they differ.

`--gpus N` on the command line (or KESTREL_REQUIRE_GPUS=N, which the operator sets on every trainer pod from the
resource's `gpus`) is an explicit request: when TensorFlow sees fewer GPUs the task fails at start with one line,
exit 2, naming what was asked, what is seen, CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES and whether this
TensorFlow was built with CUDA at all (the CPU image's is not). `--gpus 0` is the explicit CPU path. Without
either, a machine with GPUs uses them (the original's default, one per rank) and a machine without runs on the
CPU and says so in one line: the quick start keeps working on a laptop.

KESTREL_CPU_AS_GPUS=1 lets an explicit `--gpus N` run on CPU logical devices (the tests of data and model
parallelism on machines without a GPU); it is logged, never implied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Optional

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import REQUIRE_GPUS_ENV

log = logging.getLogger("kestrel")

CPU_AS_GPUS_ENV = "KESTREL_CPU_AS_GPUS"
VISIBLE_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
CPU_LINE = ("no GPU visible to TensorFlow: running on the CPU (--gpus 0 says so explicitly; --gpus N fails "
            "unless N GPUs are visible)")


def asked_gpus(gpus: Optional[int], env: Mapping[str, str]) -> Optional[int]:
    """--gpus if given, else KESTREL_REQUIRE_GPUS if set, else None (the default: whatever is there)."""
    if gpus is not None:
        return gpus
    raw = env.get(REQUIRE_GPUS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise KestrelError(f"{REQUIRE_GPUS_ENV}={raw!r}: must be a whole number >= 0 (0: CPU only)", exit_code=2)
    return value


def _asked_text(asked: int, gpus: Optional[int], need: int) -> str:
    where = f"--gpus {gpus}" if gpus is not None else f"{REQUIRE_GPUS_ENV}={asked}"
    return where if need == asked else f"{where} ({need} on this rank's node)"


def visibility(env: Mapping[str, str]) -> str:
    """The GPU visibility variables as they are set: "CUDA_VISIBLE_DEVICES='0', NVIDIA_VISIBLE_DEVICES unset"."""
    return ", ".join(f"{name}={env[name]!r}" if name in env else f"{name} unset" for name in VISIBLE_ENV)


def missing_message(asked: int, need: int, seen: int, built_with_cuda: bool, env: Mapping[str, str],
                    gpus: Optional[int]) -> str:
    """The one line (pure): what was asked, what TensorFlow sees, the visibility variables, a hint."""
    visible = visibility(env)
    if not built_with_cuda:
        hint = ("this TensorFlow is not built with CUDA (a CPU image): use the GPU trainer image "
                "(kestrel-trainer-gpu), or --gpus 0 / gpus: 0 for the CPU")
    elif seen == 0:
        hint = ("check the NVIDIA driver and device plugin (nvidia-smi in the same container; the driver's "
                "libraries on LD_LIBRARY_PATH), or --gpus 0 / gpus: 0 for the CPU")
    else:
        hint = "ask for as many GPUs as the node gives this container"
    return (f"{_asked_text(asked, gpus, need)} asks for {need} GPU(s) but TensorFlow sees {seen} ({visible}); "
            f"{hint}")


def resolve(gpus: Optional[int], env: Mapping[str, str], seen: int, built_with_cuda: bool,
            per_rank_of: int = 1) -> int:
    """The GPU count to run with (pure): raises the one-line KestrelError (exit 2) when an explicit request
    cannot be met. `per_rank_of`: ranks sharing the request (a rank under a launcher needs its share)."""
    asked = asked_gpus(gpus, env)
    if asked is None:
        return 1 if seen else 0
    if asked == 0:
        return 0
    need = max(asked // max(per_rank_of, 1), 1)
    if seen < need and not (seen == 0 and env.get(CPU_AS_GPUS_ENV, "").strip() == "1"):
        raise KestrelError(missing_message(asked, need, seen, built_with_cuda, env, gpus), exit_code=2)
    return asked


def check(args: Any, per_rank_of: int = 1, env: Optional[Mapping[str, str]] = None, announce: bool = True) -> int:
    """Resolve args.gpus against what TensorFlow sees, store the result in args.gpus, say it in one line when
    it is the CPU (unless not `announce`: prune and export, CPU work by nature); returns it. Imports TensorFlow:
    call it from run(), never at import time."""
    import tensorflow as tf

    env = os.environ if env is None else env
    seen = len(tf.config.list_physical_devices("GPU"))
    given = getattr(args, "gpus", None)
    resolved = resolve(given, env, seen, tf.test.is_built_with_cuda(), per_rank_of)
    if resolved and not seen:
        log.warning("%s=1: --gpus %d runs on CPU logical devices (no GPU visible)", CPU_AS_GPUS_ENV, resolved)
    elif not resolved and asked_gpus(given, env) is None and announce:
        log.info("%s", CPU_LINE)
    elif not resolved and announce:
        log.info("running on the CPU (%s)", "--gpus 0" if given is not None else f"{REQUIRE_GPUS_ENV}=0")
    args.gpus = resolved
    return resolved
