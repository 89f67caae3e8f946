"""Protobuf message -> a plain nested dict of values with defaults filled in.

Generic over the descriptors, so a field added to a .proto is picked up here without code: scalars
use field presence (`optional`), repeated/map fields count as set when non-empty, sub-messages are
always walked (so their fields get defaults), and of a oneof only the chosen member is walked.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message

from kestrel_trainer.spec.defaults import DEFAULTS

_FD = descriptor.FieldDescriptor


def _float32(value: float) -> float:
    """Spec floats are float32 on the wire; show 1.5e-05 rather than 1.4999999621068127e-05."""
    return float(f"{value:.7g}")


def _scalar(fd: descriptor.FieldDescriptor, value: Any) -> Any:
    if fd.type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
        return _float32(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    return value


def _is_real_oneof_member(fd: descriptor.FieldDescriptor) -> bool:
    # proto3 `optional` creates a synthetic one-field oneof; only message-typed members are real choices here.
    return fd.containing_oneof is not None and fd.message_type is not None


def resolve_message(msg: Message, path: str, defaults_used: set[str]) -> dict[str, Any]:
    """Resolve one message. Unset fields without a default resolve to None (maybe required later)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        p = f"{path}.{fd.name}" if path else fd.name
        if _is_real_oneof_member(fd):
            if msg.WhichOneof(fd.containing_oneof.name) == fd.name:
                out[fd.name] = resolve_message(getattr(msg, fd.name), p, defaults_used)
            continue
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            val_fd = fd.message_type.fields_by_name["value"]
            resolved = {k: _scalar(val_fd, v) for k, v in value.items()}
            if not resolved and p in DEFAULTS:
                resolved = dict(DEFAULTS[p])
                defaults_used.add(p)
            out[fd.name] = resolved
        elif fd.label == _FD.LABEL_REPEATED:
            items = [_scalar(fd, v) for v in value]
            if not items and p in DEFAULTS:
                items = list(DEFAULTS[p])
                defaults_used.add(p)
            out[fd.name] = tuple(items)
        elif fd.message_type is not None:
            out[fd.name] = resolve_message(value, p, defaults_used)
        elif msg.HasField(fd.name):
            out[fd.name] = _scalar(fd, value)
        elif p in DEFAULTS:
            out[fd.name] = DEFAULTS[p]
            defaults_used.add(p)
        else:
            out[fd.name] = None
    return out


def present_paths(msg: Message, path: str = "") -> set[str]:
    """Dotted paths of every field the user actually wrote (for "where did this come from" and warnings)."""
    found: set[str] = set()
    for fd, value in msg.ListFields():
        p = f"{path}.{fd.name}" if path else fd.name
        found.add(p)
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if fd.message_type is not None and not is_map and fd.label != _FD.LABEL_REPEATED:
            found |= present_paths(value, p)
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested resolved dict -> {dotted path: value}, keeping order; maps stay dict values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not _is_map_value(path):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


_MAP_FIELDS = ("train_config.image_mean", "model_config.activation.activation_parameters")


def _is_map_value(path: str) -> bool:
    return path in _MAP_FIELDS
