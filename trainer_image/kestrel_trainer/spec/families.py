"""Which model_config options each architecture honours, and what it builds where it does not.

The original passes `activation_type`, `dropout`, `use_batch_norm` and `use_bias` to some of its templates
only; elsewhere the template's own value is built whatever the spec says. We do the same, and a spec that
writes such an option with another value gets a warning instead of a different network. This table is the one
place that rule lives: the loader resolves ModelSpec's activation, dropout, use_batch_norm and use_bias through
it, and the model families build what ModelSpec says.

Sources: the original's public source (NVIDIA/tao_tensorflow1_backend, nvidia_tao_tf1/cv/makenet/model/
model_builder.py `get_model`, lines 749-835, says which spec options each arch receives; the templates in
nvidia_tao_tf1/core/templates/ give what it builds otherwise):
- resnet, vgg, googlenet: `activation_type='relu'` written in the builder (model_builder.py:150, 287, 92);
  use_batch_norm/use_bias from the spec (750-753, 756-762, 775-781); dropout only for vgg (781).
- alexnet: the builder passes nothing (754-755); templates/alexnet.py builds every conv and FC with
  `activation='relu'`, Keras' default bias, no batch norm (84-180) and no dropout in its head (146-180).
- squeezenet: only `dropout`, which get_squeezenet drops for a fixed 1e-3 (model_builder.py:387); convs
  with bias, ReLU, no batch norm (templates/squeezenet.py:75-130, utils.py fire_module 1296-1326).
- mobilenet_v1/v2: use_batch_norm/use_bias from the spec (782-790), `activation_type` never passed, so the
  templates' default 'relu' (templates/mobilenet.py:42, 173); v1's head gets `dropout=0.0`
  (model_builder.py:317), v2's head has no dropout (mobilenet.py:352-361).
- darknet: LeakyReLU(0.1) (model_builder.py:169); the cspdarknet family takes activation_type (769, 774);
  all three take use_batch_norm/use_bias (763-774).
- efficientnet_b0..b7: use_bias and activation_type from the spec (793-824), never use_batch_norm: every
  conv is followed by batch norm (templates/efficientnet.py:156-159, 203-206; utils.py block 1479, 1519,
  1611), and `project_conv` never has a bias (utils.py:1600); head dropout per variant (efficientnet.py:253,
  284, ..., 470; the facts file's table). b0's activation_type is lost to a typo (`activaton_fn`,
  efficientnet.py:266): we apply it (docs/migrating-from-tao.md, "better").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional

ANY_ACTIVATION = ("relu", "relu6", "swish", "mish", "leaky_relu")


@dataclass(frozen=True)
class FamilyOptions:
    """`activations`: the activation_type values the family takes from the spec (empty: fixed);
    `activation`: what it builds when the spec names none, or names one it does not take;
    `dropout`: None = the spec's dropout (with retain_head), else the head's fixed rate (0: no dropout);
    `batch_norm`, `bias`: None = the spec's use_batch_norm / use_bias, else what every conv is built with."""

    activations: tuple[str, ...]
    activation: str
    dropout: Optional[float]
    batch_norm: Optional[bool] = None
    bias: Optional[bool] = None


_RELU = FamilyOptions((), "relu", 0.0)
_CSP = FamilyOptions(ANY_ACTIVATION, "leaky_relu", 0.0)
_MOBILENET = FamilyOptions((), "relu", 0.0)  # the templates' relu6 is never asked for by the builder
# the facts file's efficientnet table: head dropout per variant
_EFFICIENTNET_DROPOUT = (0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5)

FAMILY_OPTIONS: Mapping[str, FamilyOptions] = MappingProxyType({
    "resnet": _RELU,
    "vgg": FamilyOptions((), "relu", None),
    "googlenet": FamilyOptions((), "relu", 0.4),
    # the builder passes them nothing but squeezenet's dropout, which it replaces by 1e-3
    "alexnet": FamilyOptions((), "relu", 0.0, batch_norm=False, bias=True),
    "squeezenet": FamilyOptions((), "relu", 1e-3, batch_norm=False, bias=True),
    "mobilenet_v1": _MOBILENET,
    "mobilenet_v2": _MOBILENET,
    "darknet": FamilyOptions((), "leaky_relu", 0.0),
    "cspdarknet": _CSP,
    "cspdarknet_tiny": _CSP,
    **{f"efficientnet_b{i}": FamilyOptions(ANY_ACTIVATION, "swish", rate, batch_norm=True)
       for i, rate in enumerate(_EFFICIENTNET_DROPOUT)},
})


def default_activation(arch: str) -> str:
    """The family's own activation when the spec names none."""
    return FAMILY_OPTIONS[arch].activation


def head_dropout(arch: str, retain_head: bool, spec_dropout: float) -> float:
    """The dropout rate the family's head is built with (the default head, without retain_head, has none)."""
    fixed = FAMILY_OPTIONS[arch].dropout
    if not retain_head:
        return 0.0
    return spec_dropout if fixed is None else fixed


def built_batch_norm(arch: str, spec_use_batch_norm: bool) -> bool:
    """Whether the family's convs are followed by batch norm."""
    fixed = FAMILY_OPTIONS[arch].batch_norm
    return spec_use_batch_norm if fixed is None else fixed


def built_bias(arch: str, spec_use_bias: bool) -> bool:
    """Whether the family's convs have a bias (where the family does not fix it per layer)."""
    fixed = FAMILY_OPTIONS[arch].bias
    return spec_use_bias if fixed is None else fixed
