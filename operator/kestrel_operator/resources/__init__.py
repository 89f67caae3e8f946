"""Custom resources as typed values: parse, defaults, validation. No kopf, no kubernetes client."""

from kestrel_operator.resources.errors import InvalidSpec
from kestrel_operator.resources.parse import parse_meta, parse_resource
from kestrel_operator.resources.types import KINDS, Resource

__all__ = ["InvalidSpec", "parse_meta", "parse_resource", "KINDS", "Resource"]
