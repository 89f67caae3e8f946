"""Would this resource make a run? The admission webhook's question, answered without creating anything.

The same steps `plan_run` takes before it builds objects: parse and check the fields, load and validate the
spec text with the trainer's own loader (its message carries the spec's line and field), and map GPUs to ranks
and pods (model_parallelism entries against gpus/numProcesses, a rank larger than a node), which the CRD's CEL
rules cannot check because they need the spec text or the operator's default gpusPerNode. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from kestrel_operator.manifests.build import gpu_mapping, validate_spec_text
from kestrel_operator.manifests.gpu_mapping import GpuMapping
from kestrel_operator.resources import parse_resource
from kestrel_operator.settings import Settings


def check_resource(body: Mapping[str, Any], settings: Settings, spec_text: Optional[str]) -> GpuMapping:
    """Raise InvalidSpec naming the field (and the spec's line) that stops this resource; else its GPU mapping.

    `spec_text` is the inline text or the referenced ConfigMap's; None skips the text (a ref not readable yet).
    """
    res = parse_resource(body, settings)
    return gpu_mapping(res, validate_spec_text(res, spec_text))
