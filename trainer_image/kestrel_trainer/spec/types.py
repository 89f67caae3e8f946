"""The resolved, immutable experiment spec that every other module reads.

Nothing outside `kestrel_trainer.spec` touches protobuf messages: the loader turns text into these
frozen dataclasses once, with defaults applied and values validated, so downstream code can trust
every field (no `if spec.x == 0` guessing about proto3 zero values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional, Union

ARCHS_WITH_DEPTH: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "resnet": (10, 18, 34, 50, 101, 152, 200),
        "vgg": (16, 19),
        "darknet": (19, 53),
        "cspdarknet": (19, 53),
    }
)
ARCHS_WITHOUT_DEPTH: tuple[str, ...] = (
    "alexnet",
    "googlenet",
    "mobilenet_v1",
    "mobilenet_v2",
    "squeezenet",
    "cspdarknet_tiny",
) + tuple(f"efficientnet_b{i}" for i in range(8))
ALL_ARCHS: tuple[str, ...] = tuple(ARCHS_WITH_DEPTH) + ARCHS_WITHOUT_DEPTH

# Valid freeze_blocks ids per family (classification_tf1's templates).
FREEZE_BLOCK_IDS: Mapping[str, range] = MappingProxyType(
    {
        "resnet": range(0, 5),
        "vgg": range(1, 6),
        "googlenet": range(0, 10),
        "alexnet": range(1, 9),
        "mobilenet_v1": range(0, 14),
        "mobilenet_v2": range(0, 19),
        "squeezenet": range(0, 9),
        "darknet": range(0, 6),
        "cspdarknet": range(0, 6),
        "cspdarknet_tiny": range(0, 6),
        **{f"efficientnet_b{i}": range(0, 9) for i in range(8)},
    }
)

ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "swish", "mish", "leaky_relu")
PREPROCESS_MODES: tuple[str, ...] = ("caffe", "torch", "tf")


@dataclass(frozen=True)
class BatchNormSpec:
    momentum: float
    epsilon: float


@dataclass(frozen=True)
class ActivationSpec:
    """`activation_type` is one of ACTIVATIONS; `parameters` e.g. {"alpha": 0.1} for leaky_relu."""

    activation_type: str
    parameters: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    n_layers: Optional[int]  # None for families without depth variants (mobilenet_v2, ...)
    input_channels: int
    input_height: int
    input_width: int
    retain_head: bool
    use_batch_norm: bool
    use_bias: bool
    use_pooling: bool
    all_projections: bool
    freeze_bn: bool
    freeze_blocks: tuple[int, ...]
    dropout: float
    resize_interpolation_method: str  # "bilinear" | "bicubic"
    batch_norm: BatchNormSpec
    activation: ActivationSpec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Channels-last (H, W, C): what Keras layers take on CPU and GPU."""
        return (self.input_height, self.input_width, self.input_channels)

    @property
    def name(self) -> str:
        """resnet18, vgg16, mobilenet_v2, ...: used for file names and logs."""
        return f"{self.arch}{self.n_layers}" if self.n_layers is not None else self.arch


@dataclass(frozen=True)
class SgdSpec:
    lr: float
    decay: float
    momentum: float
    nesterov: bool
    name: str = "sgd"


@dataclass(frozen=True)
class AdamSpec:
    lr: float
    beta_1: float
    beta_2: float
    epsilon: float
    decay: float
    name: str = "adam"


@dataclass(frozen=True)
class RmspropSpec:
    lr: float
    rho: float
    epsilon: float
    decay: float
    name: str = "rmsprop"


OptimizerSpec = Union[SgdSpec, AdamSpec, RmspropSpec]


@dataclass(frozen=True)
class StepLRSpec:
    learning_rate: float
    step_size: int  # percent of the whole run between decays
    gamma: float
    name: str = "step"


@dataclass(frozen=True)
class SoftAnnealLRSpec:
    learning_rate: float
    soft_start: float
    annealing_divider: float
    annealing_points: tuple[float, ...]
    name: str = "soft_anneal"


@dataclass(frozen=True)
class CosineLRSpec:
    learning_rate: float
    min_lr_ratio: float
    soft_start: float
    name: str = "cosine"


LRSpec = Union[StepLRSpec, SoftAnnealLRSpec, CosineLRSpec]


@dataclass(frozen=True)
class RegSpec:
    type: str  # "L1" | "L2" | "None"
    scope: tuple[str, ...]  # subset of ("Conv2D", "Dense")
    weight_decay: float


@dataclass(frozen=True)
class VisualizerSpec:
    enabled: bool
    num_images: int
    weight_histograms: bool
    clearml: bool = False  # ClearML logging is in effect: a clearml_config and `enabled` (report/tracking.py)


@dataclass(frozen=True)
class TrainSpec:
    train_dataset_path: str
    val_dataset_path: str
    pretrained_model_path: str
    optimizer: Optional[OptimizerSpec]  # None only when the task is not training
    batch_size_per_gpu: int
    n_epochs: int
    n_workers: int
    reg: RegSpec
    lr: Optional[LRSpec]
    random_seed: int
    enable_random_crop: bool
    label_smoothing: float
    preprocess_mode: str
    enable_center_crop: bool
    enable_color_augmentation: bool
    mixup_alpha: float
    model_parallelism: tuple[float, ...]
    image_mean: Mapping[str, float]  # empty: the preprocess mode's standard mean
    disable_horizontal_flip: bool
    visualizer: VisualizerSpec
    class_weighting: str = "none"  # Kestrel extension: "none" | "balanced"
    torch_std: str = "original"  # Kestrel extension: "original" (0.224 everywhere) | "per_channel"


@dataclass(frozen=True)
class EvalSpec:
    top_k: int
    eval_dataset_path: str
    model_path: str
    batch_size: int
    n_workers: int
    enable_center_crop: bool


@dataclass(frozen=True)
class ExperimentSpec:
    """A whole spec file, resolved. `defaults_used` holds dotted paths of fields that took defaults."""

    model: ModelSpec
    train: TrainSpec
    eval: EvalSpec
    source: str
    defaults_used: frozenset[str]
    warnings: tuple[str, ...] = ()
    # Every resolved field by dotted path, in file order: what `kestrel spec show` prints.
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
