"""The experiment spec text of a resource: validate it with the trainer's own loader, and point a
training run at a referenced pretrained model.

Uses `kestrel_trainer.spec` (protobuf only, never TensorFlow), so the operator rejects a bad spec with
the very message, line number included, that `kestrel train` would print, before creating anything.
"""

from __future__ import annotations

from typing import Optional

from kestrel_operator.resources.errors import InvalidSpec
from kestrel_operator.resources.types import TASKS, ResourceMeta


def spec_source(meta: ResourceMeta, field: str) -> str:
    """How messages name the text: `ClassificationTrain default/resnet18 spec.experimentSpec`."""
    return f"{meta.kind} {meta.namespace}/{meta.name} {field}"


def check_spec_text(text: str, meta: ResourceMeta, field: str):
    """Parse, default and validate for this kind's task; a SpecError becomes InvalidSpec (same message)."""
    from kestrel_trainer.spec import SpecError, parse_spec_text

    try:
        return parse_spec_text(text, source=spec_source(meta, field), task=TASKS[meta.kind])
    except SpecError as err:
        raise InvalidSpec(err.message) from None


def with_pretrained_model(text: str, model_path: Optional[str], meta: ResourceMeta, field: str) -> str:
    """Spec text whose train_config.pretrained_model_path is `model_path` (text unchanged when None).

    The trainer takes the pretrained model only from the spec, so a `pretrainedModel` reference is
    written into the copy of the spec the run mounts. Re-serialising drops comments; a header says why.
    """
    if model_path is None:
        return text
    from google.protobuf import text_format

    from kestrel_trainer.spec import SpecError
    from kestrel_trainer.spec.parse import parse_text

    try:
        message = parse_text(text, spec_source(meta, field))
    except SpecError as err:
        raise InvalidSpec(err.message) from None
    message.train_config.pretrained_model_path = model_path
    header = (
        f"# Written by kestrel-operator from {meta.kind} {meta.namespace}/{meta.name} {field}:\n"
        f"# train_config.pretrained_model_path set from spec.pretrainedModel.\n"
    )
    return header + text_format.MessageToString(message)
