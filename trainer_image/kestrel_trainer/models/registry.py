"""The model registry: arch name -> family builder, filled by a decorator in each family file.

`create_model(spec, n_classes)` is the only way the trainer builds a model. Family builders share one
signature, `build(spec: ModelSpec, n_classes: int) -> tf.keras.Model`, and never freeze or load
weights themselves: `builder.finalize` does freezing for every family in one place.

This module imports no TensorFlow at import time (the CLI lists archs without it); family modules
are imported on first use.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec.types import ARCHS_WITH_DEPTH, FREEZE_BLOCK_IDS, ModelSpec

if TYPE_CHECKING:
    import tensorflow as tf

FAMILY_MODULES = ("resnet", "vgg", "alexnet", "googlenet", "mobilenet", "squeezenet", "darknet", "efficientnet")


@dataclass(frozen=True)
class ModelEntry:
    arch: str
    family: str
    build: Callable[[ModelSpec, int], tf.keras.Model]
    block_of: Callable[[str], Optional[int]]  # layer name -> freeze block id (None: head / not in a block)
    min_input: int  # smallest H/W we test (the spec allows >= 16 everywhere; all convs use 'same' padding)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(arch: str, family: str, block_of: Callable[[str], Optional[int]], min_input: int = 32):
    """Register `build(spec, n_classes)` under `arch`."""

    def deco(fn: Callable[[ModelSpec, int], tf.keras.Model]):
        if arch in _REGISTRY:
            raise ValueError(f"arch {arch!r} registered twice")
        _REGISTRY[arch] = ModelEntry(arch, family, fn, block_of, min_input)
        return fn

    return deco


def _load_families() -> None:
    for mod in FAMILY_MODULES:
        importlib.import_module(f"kestrel_trainer.models.{mod}")


def get_entry(arch: str) -> ModelEntry:
    if not _REGISTRY:
        _load_families()
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise SpecError(f"model_config.arch: unknown arch {arch!r}; expected one of {sorted(_REGISTRY)}") from None


def list_archs() -> list[str]:
    if not _REGISTRY:
        _load_families()
    return sorted(_REGISTRY)


def family_of(arch: str) -> str:
    """resnet, vgg, ..., mobilenet (v1 and v2), darknet (darknet, cspdarknet, cspdarknet_tiny), efficientnet."""
    if arch.startswith("efficientnet_b"):
        return "efficientnet"
    if arch.startswith("mobilenet"):
        return "mobilenet"
    if "darknet" in arch:
        return "darknet"
    return arch


def block_id_of(arch: str, layer_name: str) -> Optional[int]:
    """The freeze_blocks id a layer belongs to (None for the head and layers outside any block)."""
    return get_entry(arch).block_of(layer_name)


def check_model_spec(spec: ModelSpec) -> None:
    """Depth and freeze ids: the loader validates these too, but a spec built in code must not slip by."""
    depths = ARCHS_WITH_DEPTH.get(spec.arch)
    if depths is not None and spec.n_layers not in depths:
        raise SpecError(f"model_config.n_layers: {spec.arch} supports {list(depths)}, got {spec.n_layers}")
    valid = FREEZE_BLOCK_IDS.get(spec.arch)
    bad = [b for b in spec.freeze_blocks if valid is None or b not in valid]
    if bad:
        raise SpecError(
            f"model_config.freeze_blocks: {bad} not valid for {spec.arch} "
            f"(valid: {list(valid) if valid is not None else []})"
        )


def create_model(model_spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    """Build `model_spec.arch` for `n_classes`, with freeze_blocks/freeze_bn applied. Not compiled."""
    from kestrel_trainer.models.builder import finalize

    check_model_spec(model_spec)
    if n_classes < 1:
        raise SpecError(f"number of classes must be >= 1, got {n_classes}")
    entry = get_entry(model_spec.arch)
    model = entry.build(model_spec, n_classes)
    return finalize(model, model_spec, entry.block_of)


def block_regex(pattern: str, offset: int = 0) -> Callable[[str], Optional[int]]:
    """Helper for families whose block id is a number in the layer name."""
    rx = re.compile(pattern)

    def block_of(name: str) -> Optional[int]:
        m = rx.match(name)
        return int(m.group(1)) + offset if m else None

    return block_of
