"""The one spec loader: text -> parse -> defaults -> validate -> immutable ExperimentSpec.

Validation is per task because the tasks need different sections: training needs datasets, an
optimizer and a learning-rate schedule; evaluate needs an eval dataset; inference and export need
only the model and its preprocessing. Every error is one line naming the file, the line where the
field is written (when it is written) and the dotted field path, then what is allowed.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, Optional, Union

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec import types as t
from kestrel_trainer.spec.defaults import DEFAULT_LEAKY_ALPHA, DEFAULT_N_LAYERS
from kestrel_trainer.spec.families import FAMILY_OPTIONS, built_batch_norm, built_bias, head_dropout
from kestrel_trainer.spec.locate import find_line
from kestrel_trainer.spec.parse import merge_warnings, parse_text
from kestrel_trainer.spec.resolve import flatten, present_paths, resolve_message

TASKS: tuple[str, ...] = ("train", "evaluate", "inference", "export", "prune")
_ACTIVATION_ALIASES = {"leaky": "leaky_relu", "leakyrelu": "leaky_relu", "silu": "swish"}
_ACTIVATION_PARAMS = {"leaky_relu": ("alpha",)}
_REG_TYPES = {"l1": "L1", "l2": "L2", "none": "None", "no_reg": "None"}  # NO_REG: the original's docs, retraining
Number = Union[int, float]

# Fields with no default whose proto3 zero would not train: training refuses a spec without them and says what
# to write; `spec check` without a task warns; other tasks do not read them. Path -> what to write and why.
TRAIN_REQUIRED = MappingProxyType({
    "train_config.lr_config.step.step_size": "the percent of the run between decays (1-100), for example "
    "step_size: 10; the original fails on its first step without it",
    "train_config.lr_config.step.gamma": "the decay factor in (0, 1], for example gamma: 0.1; without it the "
    "original multiplies the rate by 0 and stops learning after the first step",
    "train_config.lr_config.soft_anneal.annealing_divider": "the divisor applied at each of the annealing_points, "
    "for example annealing_divider: 10; without it the original divides by 0 at the first point",
    "train_config.optimizer.adam.beta_1": "write beta_1: 0.9 (Keras' default), or beta_1: 0 for what the "
    "original does without it (protobuf's zero)",
    "train_config.optimizer.adam.beta_2": "write beta_2: 0.999 (Keras' default), or beta_2: 0 for what the "
    "original does without it (protobuf's zero)",
    "train_config.optimizer.adam.epsilon": "write epsilon: 1e-7 (Keras' default); the original uses 0 without "
    "it, which divides by zero on a weight whose gradient is 0",
    "train_config.optimizer.rmsprop.rho": "write rho: 0.9 (Keras' default), or rho: 0 for what the original does "
    "without it (protobuf's zero)",
    "train_config.optimizer.rmsprop.epsilon": "write epsilon: 1e-7 (Keras' default); the original uses 0 without "
    "it, which divides by zero on a weight whose gradient is 0",
})


class _Checker:
    """Carries the text and source so every check can point at a line."""

    def __init__(self, text: str, source: str, present: set[str], task: Optional[str] = None) -> None:
        self.text = text
        self.source = source
        self.present = present
        self.task = task
        self.warnings: list[str] = []

    def where(self, path: str) -> str:
        probe = re.sub(r"\[\d+\]", "", path)
        while probe:
            line = find_line(self.text, probe)
            if line is not None:
                return f"{self.source}:{line}"
            probe = probe.rpartition(".")[0]
        return self.source

    def fail(self, path: str, what: str) -> NoReturn:
        raise SpecError(f"{self.where(path)}: {path}: {what}")

    def warn(self, path: str, what: str) -> None:
        self.warnings.append(f"{self.where(path)}: {path}: {what}")

    def require(self, value: Any, path: str, task: str) -> Any:
        if value is None or value == "":
            self.fail(path, f"is required for {task}")
        return value

    def for_training(self, value: Optional[Number], path: str) -> Number:
        """A TRAIN_REQUIRED value: refused for training when unset, else what the original reads (0)."""
        if value is not None:
            return value
        if self.task == "train":
            self.fail(path, f"is not set and has no default: {TRAIN_REQUIRED[path]}")
        if self.task is None:
            self.warn(path, f"is not set; training will refuse this spec: {TRAIN_REQUIRED[path]}")
        return 0

    def in_range(
        self,
        value: Number,
        path: str,
        lo: Number,
        hi: Optional[Number] = None,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> Number:
        ok = (value > lo if lo_open else value >= lo) and (
            hi is None or (value < hi if hi_open else value <= hi)
        )
        if not ok:
            left = "(" if lo_open else "["
            right = "inf)" if hi is None else (f"{hi})" if hi_open else f"{hi}]")
            self.fail(path, f"{value} is out of range; allowed: {left}{lo}, {right}")
        return value

    def one_of(self, value: str, path: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            self.fail(path, f'"{value}" is not allowed{hint}; allowed: {", ".join(allowed)}')
        return value


def _parse_image_size(c: _Checker, raw: str) -> tuple[int, int, int]:
    path = "model_config.input_image_size"
    m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", raw or "")
    if not m:
        c.fail(path, f'"{raw}" is not "C,H,W" (for example "3,224,224")')
    ch, h, w = (int(g) for g in m.groups())
    if ch not in (1, 3):
        c.fail(path, f"channels C={ch} is not allowed; allowed: 1 (grayscale) or 3 (RGB)")
    if h < 16 or w < 16:
        c.fail(path, f"H,W = {h},{w} is too small; H and W must be >= 16")
    return ch, h, w


def _resolve_activation(c: _Checker, arch: str, act: dict[str, Any], defaults_used: set[str]) -> t.ActivationSpec:
    """The activation the family builds: the spec's where the family takes one (families.py), else its own."""
    path = "model_config.activation.activation_type"
    options = FAMILY_OPTIONS[arch]
    written = act["activation_type"]
    act_type = _ACTIVATION_ALIASES.get(written.lower(), written.lower()) if written else options.activation
    if not written:
        defaults_used.add(path)
    c.one_of(act_type, path, t.ACTIVATIONS)
    params = dict(act["activation_parameters"])
    for key in params:
        allowed_keys = _ACTIVATION_PARAMS.get(act_type, ())
        if key not in allowed_keys:
            c.fail(
                "model_config.activation.activation_parameters",
                f'"{key}" is not a parameter of {act_type}; allowed: {", ".join(allowed_keys) or "none"}',
            )
    if act_type == "leaky_relu":
        params.setdefault("alpha", DEFAULT_LEAKY_ALPHA)
        c.in_range(params["alpha"], "model_config.activation.activation_parameters", 0.0, 1.0)
    if act_type in options.activations:
        return t.ActivationSpec(activation_type=act_type, parameters=MappingProxyType(params))
    built = options.activation
    built_params = {"alpha": DEFAULT_LEAKY_ALPHA} if built == "leaky_relu" else {}
    if (written and act_type != built) or (act["activation_parameters"] and params != built_params):
        takes = (f"takes only {' or '.join(options.activations)} from the spec" if options.activations
                 else "takes no activation_type from the spec (as in the original)")
        shown = f"{built} (alpha {DEFAULT_LEAKY_ALPHA})" if built == "leaky_relu" else built
        c.warn(path if written else "model_config.activation.activation_parameters",
               f"ignored: {arch} {takes}; it is built with {shown}")
    return t.ActivationSpec(activation_type=built, parameters=MappingProxyType(built_params))


def _resolve_dropout(c: _Checker, arch: str, retain_head: bool, dropout: float) -> float:
    """The head's dropout as the family builds it (families.py); a written value it does not use is a warning."""
    c.in_range(dropout, "model_config.dropout", 0.0, 1.0, hi_open=True)
    built = head_dropout(arch, retain_head, dropout)
    if "model_config.dropout" in c.present and dropout != built:
        if not retain_head:
            why = "the default head (retain_head: false) has no dropout"
        else:
            rate = f"dropout {built:g}" if built else "no dropout"
            why = f"{arch}'s head is built with {rate} (as in the original)"
        c.warn("model_config.dropout", f"{dropout:g} is ignored: {why}")
    return built


_BUILT_AS = {"use_batch_norm": ("with batch norm after every conv", "without batch norm"),
             "use_bias": ("with a bias on every conv", "without conv biases")}


def _resolve_fixed(c: _Checker, arch: str, field: str, value: bool) -> bool:
    """use_batch_norm / use_bias as the family builds them (families.py); a written value it ignores warns."""
    path = f"model_config.{field}"
    built = (built_batch_norm if field == "use_batch_norm" else built_bias)(arch, value)
    if path in c.present and value != built:
        shown = _BUILT_AS[field][0 if built else 1]
        c.warn(path, f"{str(value).lower()} is ignored: {arch} is always built {shown} (as in the original)")
    return built


def _build_model(c: _Checker, m: dict[str, Any], defaults_used: set[str]) -> t.ModelSpec:
    arch = c.one_of(m["arch"], "model_config.arch", t.ALL_ARCHS)
    n_layers: Optional[int] = m["n_layers"]
    if arch in t.ARCHS_WITH_DEPTH:
        allowed = t.ARCHS_WITH_DEPTH[arch]
        if not n_layers:  # unset or 0: the original's `n_layers if n_layers else <default depth>`
            n_layers = DEFAULT_N_LAYERS[arch]
            defaults_used.add("model_config.n_layers")
        elif n_layers not in allowed:
            c.fail(
                "model_config.n_layers",
                f"{n_layers} is not valid for {arch}; allowed: {', '.join(map(str, allowed))}",
            )
    else:
        if n_layers is not None and n_layers != 0:
            c.warn("model_config.n_layers", f"ignored: {arch} has no depth variants")
        n_layers = None
    ch, h, w = _parse_image_size(c, m["input_image_size"])
    valid_blocks = t.FREEZE_BLOCK_IDS[arch]
    for i, block in enumerate(m["freeze_blocks"]):
        if block not in valid_blocks:
            c.fail(
                f"model_config.freeze_blocks[{i}]",
                f"block {block} does not exist in {arch}; allowed: {valid_blocks.start}..{valid_blocks.stop - 1}",
            )
    dropout = _resolve_dropout(c, arch, m["retain_head"], m["dropout"])
    bn = m["batch_norm_config"]
    c.in_range(bn["momentum"], "model_config.batch_norm_config.momentum", 0.0, 1.0, lo_open=True, hi_open=True)
    c.in_range(bn["epsilon"], "model_config.batch_norm_config.epsilon", 0.0, lo_open=True)
    activation = _resolve_activation(c, arch, m["activation"], defaults_used)
    if m["byom_model"]:
        c.fail("model_config.byom_model", "is not supported: Kestrel builds models from its own zoo (arch)")
    return t.ModelSpec(
        arch=arch,
        n_layers=n_layers,
        input_channels=ch,
        input_height=h,
        input_width=w,
        retain_head=m["retain_head"],
        use_batch_norm=_resolve_fixed(c, arch, "use_batch_norm", m["use_batch_norm"]),
        use_bias=_resolve_fixed(c, arch, "use_bias", m["use_bias"]),
        use_pooling=m["use_pooling"],
        all_projections=m["all_projections"],
        freeze_bn=m["freeze_bn"],
        freeze_blocks=tuple(m["freeze_blocks"]),
        dropout=dropout,
        resize_interpolation_method=m["resize_interpolation_method"].lower(),
        batch_norm=t.BatchNormSpec(momentum=bn["momentum"], epsilon=bn["epsilon"]),
        activation=activation,
    )


def _build_optimizer(c: _Checker, o: dict[str, Any], task: Optional[str]) -> Optional[t.OptimizerSpec]:
    base = "train_config.optimizer"
    if not o:
        if task == "train":
            c.fail(base, "is required for training: give one of sgd { ... }, adam { ... }, rmsprop { ... }")
        return None
    (name, v), = o.items()
    p = f"{base}.{name}"
    c.in_range(v["lr"], f"{p}.lr", 0.0)
    c.in_range(v["decay"], f"{p}.decay", 0.0)
    if name == "sgd":
        c.in_range(v["momentum"], f"{p}.momentum", 0.0, 1.0, hi_open=True)
        return t.SgdSpec(lr=v["lr"], decay=v["decay"], momentum=v["momentum"], nesterov=v["nesterov"])
    # Adam's betas, RMSprop's rho, then epsilon: in range when written, TRAIN_REQUIRED when not
    values = {}
    for key in (("beta_1", "beta_2") if name == "adam" else ("rho",)) + ("epsilon",):
        if v[key] is not None:
            if key == "epsilon":
                c.in_range(v[key], f"{p}.{key}", 0.0, lo_open=True)
            else:
                c.in_range(v[key], f"{p}.{key}", 0.0, 1.0, hi_open=True)
        values[key] = c.for_training(v[key], f"{p}.{key}")
    if name == "adam":
        return t.AdamSpec(lr=v["lr"], decay=v["decay"], **values)
    return t.RmspropSpec(lr=v["lr"], decay=v["decay"], **values)


def _build_lr(c: _Checker, lr: dict[str, Any], task: Optional[str]) -> Optional[t.LRSpec]:
    base = "train_config.lr_config"
    if not lr:
        if task == "train":
            c.fail(base, "is required for training: give one of step { ... }, soft_anneal { ... }, cosine { ... }")
        return None
    (name, v), = lr.items()
    p = f"{base}.{name}"
    if v["learning_rate"] is None:
        c.fail(f"{p}.learning_rate", "is required (the base learning rate, > 0)")
    c.in_range(v["learning_rate"], f"{p}.learning_rate", 0.0, lo_open=True)
    if name == "step":
        if v["step_size"] is not None:
            c.in_range(v["step_size"], f"{p}.step_size", 1, 100)
        if v["gamma"] is not None:
            c.in_range(v["gamma"], f"{p}.gamma", 0.0, 1.0, lo_open=True)
        return t.StepLRSpec(learning_rate=v["learning_rate"], step_size=int(c.for_training(v["step_size"],
                            f"{p}.step_size")), gamma=c.for_training(v["gamma"], f"{p}.gamma"))
    c.in_range(v["soft_start"], f"{p}.soft_start", 0.0, 1.0, hi_open=True)
    if name == "cosine":
        c.in_range(v["min_lr_ratio"], f"{p}.min_lr_ratio", 0.0, 1.0, hi_open=True)
        return t.CosineLRSpec(
            learning_rate=v["learning_rate"], min_lr_ratio=v["min_lr_ratio"], soft_start=v["soft_start"]
        )
    points = v["annealing_points"]
    divider = v["annealing_divider"]
    if divider is not None:
        c.in_range(divider, f"{p}.annealing_divider", 0.0, lo_open=True)
    elif points:  # without points the rate never divides: the original's zero divider is never used
        divider = c.for_training(divider, f"{p}.annealing_divider")
    previous = v["soft_start"]
    for i, point in enumerate(points):
        if not previous < point < 1.0:
            c.fail(
                f"{p}.annealing_points[{i}]",
                f"{point} must be increasing and lie in (soft_start={v['soft_start']}, 1)"
                + (f", after {previous}" if i else ""),
            )
        previous = point
    return t.SoftAnnealLRSpec(
        learning_rate=v["learning_rate"],
        soft_start=v["soft_start"],
        annealing_divider=1.0 if divider is None else divider,
        annealing_points=tuple(points),
    )


def _build_reg(c: _Checker, r: dict[str, Any]) -> t.RegSpec:
    p = "train_config.reg_config"
    reg_type = _REG_TYPES.get(str(r["type"]).lower(), r["type"])
    c.one_of(reg_type, f"{p}.type", ("L1", "L2", "None"))
    scope = tuple(s.strip() for s in r["scope"].split(",") if s.strip())
    for s in scope:
        c.one_of(s, f"{p}.scope", ("Conv2D", "Dense"))
    if reg_type != "None":
        if not scope:
            c.fail(f"{p}.scope", 'is empty; give "Conv2D", "Dense" or "Conv2D,Dense"')
        c.in_range(r["weight_decay"], f"{p}.weight_decay", 0.0, 1.0, lo_open=True, hi_open=True)
    return t.RegSpec(type=reg_type, scope=scope, weight_decay=r["weight_decay"])


def _build_train(
    c: _Checker, tc: dict[str, Any], model: t.ModelSpec, task: Optional[str]
) -> t.TrainSpec:
    p = "train_config"
    if task == "train":
        c.require(tc["train_dataset_path"], f"{p}.train_dataset_path", "training")
        c.require(tc["val_dataset_path"], f"{p}.val_dataset_path", "training")
    for name in ("batch_size_per_gpu", "n_epochs", "n_workers"):
        c.in_range(tc[name], f"{p}.{name}", 1)
    c.in_range(tc["label_smoothing"], f"{p}.label_smoothing", 0.0, 1.0, hi_open=True)
    c.in_range(tc["mixup_alpha"], f"{p}.mixup_alpha", 0.0)
    mode = c.one_of(str(tc["preprocess_mode"]).lower(), f"{p}.preprocess_mode", t.PREPROCESS_MODES)
    for i, fraction in enumerate(tc["model_parallelism"]):
        c.in_range(fraction, f"{p}.model_parallelism[{i}]", 0.0, lo_open=True)
    image_mean = dict(tc["image_mean"])
    if image_mean:
        want = {"r", "g", "b"} if model.input_channels == 3 else {"l"}
        if set(image_mean) != want:
            c.fail(
                f"{p}.image_mean",
                f"keys {', '.join(sorted(image_mean))} do not match input_image_size with C="
                f"{model.input_channels}; give exactly {', '.join(sorted(want))}",
            )
        for value in image_mean.values():
            c.in_range(value, f"{p}.image_mean", 0.0, 255.0)
        if mode != "caffe":
            c.warn(f"{p}.image_mean", f"is used in caffe mode only; preprocess_mode is {mode}")
    class_weighting = c.one_of(str(tc["class_weighting"]).lower(), f"{p}.class_weighting", ("none", "balanced"))
    torch_std = c.one_of(str(tc["torch_std"]).lower(), f"{p}.torch_std", ("original", "per_channel"))
    vis = tc["visualizer"]
    clearml = f"{p}.visualizer.clearml_config" in c.present and bool(vis["enabled"])
    if f"{p}.visualizer.clearml_config" in c.present and not clearml:
        c.warn(f"{p}.visualizer.clearml_config", "has no effect: ClearML logging needs visualizer.enabled "
               "(docs/tracking.md)")
    for name in ("reuse_last_task_id", "continue_last_task", "deferred_init"):
        if f"{p}.visualizer.clearml_config.{name}" in c.present:
            c.warn(f"{p}.visualizer.clearml_config.{name}", "is not used: a resumed run (the same results folder) "
                   "continues its ClearML task (RESULTS/tracking.json), a new folder starts a new task")
    if f"{p}.visualizer.wandb_config" in c.present and not (vis["enabled"] and (vis["wandb_config"] or {}).get(
            "enabled")):
        c.warn(f"{p}.visualizer.wandb_config", "has no effect: W&B logging needs visualizer.enabled and "
               "wandb_config.enabled (docs/tracking.md)")
    return t.TrainSpec(
        train_dataset_path=tc["train_dataset_path"] or "",
        val_dataset_path=tc["val_dataset_path"] or "",
        pretrained_model_path=tc["pretrained_model_path"],
        optimizer=_build_optimizer(c, tc["optimizer"], task),
        batch_size_per_gpu=tc["batch_size_per_gpu"],
        n_epochs=tc["n_epochs"],
        n_workers=tc["n_workers"],
        reg=_build_reg(c, tc["reg_config"]),
        lr=_build_lr(c, tc["lr_config"], task),
        random_seed=tc["random_seed"],
        enable_random_crop=tc["enable_random_crop"],
        label_smoothing=tc["label_smoothing"],
        preprocess_mode=mode,
        enable_center_crop=tc["enable_center_crop"],
        enable_color_augmentation=tc["enable_color_augmentation"],
        mixup_alpha=tc["mixup_alpha"],
        model_parallelism=tuple(tc["model_parallelism"]),
        image_mean=MappingProxyType(image_mean),
        disable_horizontal_flip=tc["disable_horizontal_flip"],
        visualizer=t.VisualizerSpec(
            enabled=vis["enabled"], num_images=vis["num_images"], weight_histograms=vis["weight_histograms"],
            clearml=clearml,
        ),
        class_weighting=class_weighting,
        torch_std=torch_std,
    )


def _build_eval(c: _Checker, ec: dict[str, Any], task: Optional[str]) -> t.EvalSpec:
    p = "eval_config"
    if task == "evaluate":
        c.require(ec["eval_dataset_path"], f"{p}.eval_dataset_path", "evaluate")
    for name in ("top_k", "batch_size", "n_workers"):
        c.in_range(ec[name], f"{p}.{name}", 1)
    return t.EvalSpec(
        top_k=ec["top_k"],
        eval_dataset_path=ec["eval_dataset_path"] or "",
        model_path=ec["model_path"] or "",
        batch_size=ec["batch_size"],
        n_workers=ec["n_workers"],
        enable_center_crop=ec["enable_center_crop"],
    )


def parse_spec_text(text: str, source: str = "<string>", task: Optional[str] = None) -> t.ExperimentSpec:
    """Parse, default and validate spec text for `task` (None: check ranges only, no task needs)."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    message = parse_text(text, source)
    defaults_used: set[str] = set()
    tree = resolve_message(message, "", defaults_used)
    checker = _Checker(text, source, present_paths(message), task)
    checker.warnings.extend(merge_warnings(text, source))
    model = _build_model(checker, tree["model_config"], defaults_used)
    train = _build_train(checker, tree["train_config"], model, task)
    evaluation = _build_eval(checker, tree["eval_config"], task)
    tree["model_config"]["n_layers"] = model.n_layers
    tree["model_config"]["dropout"] = model.dropout
    tree["model_config"]["activation"]["activation_type"] = model.activation.activation_type
    tree["model_config"]["activation"]["activation_parameters"] = dict(model.activation.parameters)
    return t.ExperimentSpec(
        fields=MappingProxyType(flatten(tree)),
        model=model,
        train=train,
        eval=evaluation,
        source=source,
        defaults_used=frozenset(defaults_used),
        warnings=tuple(checker.warnings),
    )


def load_spec(path: Union[str, Path], task: Optional[str] = None) -> t.ExperimentSpec:
    """Read and resolve a spec file; a missing or unreadable file is a SpecError naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{p}: spec file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, not a spec file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{p}: cannot read spec file: {err}") from None
    return parse_spec_text(text, source=str(p), task=task)
