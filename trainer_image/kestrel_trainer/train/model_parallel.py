"""Layer-wise model parallelism: the spec's `model_parallelism` fractions split a rank's model across its devices.

With `--gpus G --num_processes P` each rank owns k = G/P devices: GPUs local_rank*k ... local_rank*k+k-1
(or those entries of --gpu_index). The model's layers, in order, are cut into k consecutive ranges sized
by the fractions (normalised by their sum); range j lives on device j: its variables are created there
and its ops run there, so a model too large for one GPU's memory fits on k of them. Keras' functional
graph does not record device scopes, so each layer's `build` and `call` are wrapped in `tf.device`:
the wrapping is not part of the saved model (files stay ordinary, unsplit Keras models).

On a machine without GPUs the CPU is split into k logical devices, which runs the same placement code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.parallelism import FLAGS, parallelism


@dataclass(frozen=True)
class DevicePlan:
    """What devices one rank trains on."""

    per_rank: int  # k = G / P
    gpu_ids: tuple[int, ...]  # physical GPU ids of this rank (empty: CPU)
    fractions: tuple[float, ...]  # normalised model_parallelism; empty: no split

    @property
    def split(self) -> bool:
        return len(self.fractions) > 1


@dataclass(frozen=True)
class PlacementRow:
    device: str
    first_layer: str
    last_layer: str
    n_layers: int
    params: int
    activation_bytes: int  # outputs of the range's layers for one batch (kept for the backward pass)


def normalise(fractions: Sequence[float]) -> tuple[float, ...]:
    total = float(sum(fractions))
    if not fractions or total <= 0 or any(f <= 0 for f in fractions):
        raise KestrelError(f"model_parallelism fractions must be positive, got {list(fractions)}", exit_code=2)
    return tuple(float(f) / total for f in fractions)


def plan_devices(
    gpus: int, processes: int, local_rank: int, fractions: Sequence[float], n_visible_gpus: int,
    gpu_index: Optional[Sequence[int]] = None,
) -> DevicePlan:
    """Check --gpus/--num_processes against the spec's fractions and pick this rank's devices (pure).

    Whether the numbers fit is the rule the operator checks too (kestrel_trainer.spec.parallelism)."""
    rule = parallelism(gpus, processes, fractions, terms=FLAGS)
    if not rule.ok:
        raise KestrelError(rule.message(), exit_code=2)
    k = rule.gpus_per_rank or 1  # a CPU rank (--gpus 0) owns one device
    norm = normalise(fractions) if len(fractions) > 1 else ()
    gpu_ids: tuple[int, ...] = ()
    if n_visible_gpus:
        ids = list(gpu_index) if gpu_index else list(range(n_visible_gpus))
        mine = ids[local_rank * k: local_rank * k + k]
        if len(mine) < k or any(not 0 <= i < n_visible_gpus for i in mine):
            raise KestrelError(
                f"local rank {local_rank} needs GPUs {local_rank * k}..{local_rank * k + k - 1} of {ids} but only "
                f"{n_visible_gpus} GPU(s) are visible", exit_code=2)
        gpu_ids = tuple(mine if norm else mine[:1])
    return DevicePlan(per_rank=k, gpu_ids=gpu_ids, fractions=norm)


def configure_devices(plan: DevicePlan) -> list[str]:
    """Make this rank's devices visible to TensorFlow; the device names the parts go to.

    Must run before TensorFlow initialises its runtime (the first op). GPUs: only this rank's GPUs are
    visible, renumbered /GPU:0..; memory grows on demand. CPU (--gpus 0, or no GPU with KESTREL_CPU_AS_GPUS=1): no
    GPU visible; with a split, k logical CPU devices.
    """
    import tensorflow as tf

    parts = max(len(plan.fractions), 1)
    try:
        if plan.gpu_ids:
            physical = tf.config.list_physical_devices("GPU")
            mine = [physical[i] for i in plan.gpu_ids]
            tf.config.set_visible_devices(mine, "GPU")
            for gpu in mine:
                tf.config.experimental.set_memory_growth(gpu, True)
            return [f"/GPU:{j}" for j in range(len(mine))]
        if tf.config.list_physical_devices("GPU"):  # --gpus 0 on a GPU machine: the CPU, as asked
            tf.config.set_visible_devices([], "GPU")
        if parts > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * parts)
    except RuntimeError as err:  # the runtime was already initialised (only in-process library use)
        have = tf.config.list_logical_devices("GPU" if plan.gpu_ids else "CPU")
        if len(have) < parts:
            raise KestrelError(f"cannot set up {parts} devices: {err}", exit_code=2) from err
    return [f"/CPU:{j}" for j in range(parts)] if parts > 1 else ["/CPU:0"]


def split_layers(n_layers: int, fractions: Sequence[float]) -> list[int]:
    """The part (0..k-1) of each of n layers in order: part j gets ~fractions[j] of them, at least one."""
    k = len(fractions)
    if n_layers < k:
        raise KestrelError(f"cannot split {n_layers} layers into {k} model-parallel parts", exit_code=2)
    cum = np.cumsum(fractions)
    ends = [int(round(c * n_layers)) for c in cum[:-1]] + [n_layers]
    parts, start = [], 0
    for j, end in enumerate(ends):
        end = max(end, start + 1)  # every device gets a layer ...
        end = min(end, n_layers - (k - 1 - j))  # ... and leaves one for each later device
        parts += [j] * (end - start)
        start = end
    return parts


def _output_elements(layer: Any) -> int:
    shapes = layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]
    return sum(math.prod(d for d in s[1:] if d) for s in shapes if s)


def _wrap_in_device(layer: Any, device: str) -> None:
    import tensorflow as tf

    build, call = layer.build, layer.call

    def placed_build(*args: Any, **kwargs: Any) -> Any:
        with tf.device(device):
            return build(*args, **kwargs)

    def placed_call(*args: Any, **kwargs: Any) -> Any:
        with tf.device(device):
            return call(*args, **kwargs)

    layer.build, layer.call = placed_build, placed_call
    layer.kestrel_device = device


def place_model(
    model: Any, devices: Sequence[str], fractions: Sequence[float], batch_size: int, bytes_per_value: int = 4,
) -> tuple[Any, list[PlacementRow]]:
    """A copy of `model` (same layer names, same weights) whose layer ranges live on `devices`.

    The copy is rebuilt layer by layer (clone_model) so that each layer's variables are created on its
    device, then given the original's weights.
    """
    import tensorflow as tf

    layers = [layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    parts = split_layers(len(layers), fractions)
    device_of = {layer.name: devices[p] for layer, p in zip(layers, parts)}

    def clone(layer: Any) -> Any:
        new = layer.__class__.from_config(layer.get_config())
        if layer.name in device_of:
            _wrap_in_device(new, device_of[layer.name])
        return new

    placed = tf.keras.models.clone_model(model, clone_function=clone)
    placed.set_weights(model.get_weights())
    rows = []
    for j, device in enumerate(devices):
        mine = [layer for layer, p in zip(layers, parts) if p == j]
        rows.append(PlacementRow(
            device=device, first_layer=mine[0].name, last_layer=mine[-1].name, n_layers=len(mine),
            params=sum(layer.count_params() for layer in mine),
            activation_bytes=sum(_output_elements(layer) for layer in mine) * batch_size * bytes_per_value,
        ))
    return placed, rows


def format_table(rows: Sequence[PlacementRow], batch_size: int, physical: Optional[Sequence[int]] = None) -> str:
    """The split as the log shows it: layer range -> device, parameters, estimated activation memory."""
    head = ("layers", "device", "params", f"activations/batch of {batch_size}")
    body = []
    for j, r in enumerate(rows):
        device = r.device + (f" (GPU {physical[j]})" if physical else "")
        body.append((f"{r.first_layer} .. {r.last_layer} ({r.n_layers})", device, f"{r.params:,}",
                     f"{r.activation_bytes / 2**20:.1f} MiB"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in (head, *body)]
    return "\n".join(lines)


def devices_of(model: Any) -> dict[str, str]:
    """Layer name -> the device it was placed on (for tests and logs)."""
    return {layer.name: layer.kestrel_device for layer in model.layers if hasattr(layer, "kestrel_device")}


def rebuild_optimizer(src: Any) -> Any:
    """A fresh optimizer of the same kind and settings (schedule included) as `src`, without its state."""
    return src.__class__.from_config(src.get_config())


def restore_optimizer_state(optimizer: Any, variables: Sequence[Any], state: Sequence[np.ndarray]) -> None:
    """Give a new optimizer (wrapped, or for a re-placed model) the saved state of the one it replaces.

    Keras 2's legacy optimizers keep [iterations, slots in variable order]: create them for `variables`
    (on each variable's device), then assign. The step counter drives the LR schedule on resume.
    """
    inner = optimizer
    while hasattr(inner, "inner_optimizer"):  # LossScaleOptimizer: the state lives in the inner one
        inner = inner.inner_optimizer
    inner._create_all_weights(list(variables))
    if len(inner.weights) != len(state):
        raise KestrelError(f"the checkpoint's optimizer has {len(state)} state arrays, the rebuilt one "
                           f"{len(inner.weights)}: cannot resume its state", exit_code=2)
    inner.set_weights(list(state))
