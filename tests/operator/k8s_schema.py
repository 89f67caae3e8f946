"""Test-side checks of Kubernetes objects and CRD schemas (no jsonschema package, no cluster).

- `validate(obj, schema)`: an instance against a CRD openAPIV3Schema, strict about unknown fields the
  way `kubectl apply` (server-side field validation "Strict") is; CEL rules are not evaluated here.
- `structural_errors(schema)`: the API server's structural-schema rules that a CRD must pass.
- `check_core(obj, model)`: a core object (or pod template) against the Kubernetes client's model
  classes: unknown fields anywhere, wrong types, missing required fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import kubernetes.client as k8s


def _type_ok(value: Any, t: str) -> bool:
    return {
        "object": isinstance(value, Mapping),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[t]


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    errors: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        if not (_type_ok(value, "integer") or _type_ok(value, "string")):
            return [f"{path}: must be an integer or a string, got {value!r}"]
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        return errors
    t = schema.get("type")
    if t is None:
        return [] if schema.get("x-kubernetes-preserve-unknown-fields") else [f"{path}: schema has no type"]
    if not _type_ok(value, t):
        return [f"{path}: must be {t}, got {type(value).__name__} {value!r}"[:200]]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if t in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if t == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if t == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if t == "object" and path == ".metadata":
        return errors  # ObjectMeta: the API server validates it itself
    if t == "object":
        props = schema.get("properties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, item in value.items():
            if props is not None and key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += validate(item, schema["additionalProperties"], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    return errors


_VALUE_ONLY = {"type", "description", "default", "nullable", "additionalProperties", "properties", "items",
               "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
               "x-kubernetes-validations"}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_FORBIDDEN = {"$ref", "definitions", "dependencies", "id", "$schema", "patternProperties", "uniqueItems"}


def structural_errors(schema: Mapping[str, Any], path: str = "", in_junctor: bool = False) -> list[str]:
    """The apiextensions structural-schema rules (the subset relevant to hand-written schemas)."""
    errors: list[str] = []
    for key in _FORBIDDEN & set(schema):
        errors.append(f"{path}: {key} is not allowed")
    if schema.get("uniqueItems") is True:
        errors.append(f"{path}: uniqueItems is not allowed")
    if in_junctor:
        bad = set(schema) & _VALUE_ONLY
        if bad:
            errors.append(f"{path}: inside anyOf/allOf/oneOf/not only value validations are allowed, not {sorted(bad)}")
    else:
        if "type" not in schema and not (schema.get("x-kubernetes-int-or-string")
                                         or schema.get("x-kubernetes-preserve-unknown-fields")):
            errors.append(f"{path}: no type")
    if schema.get("x-kubernetes-int-or-string"):
        any_of = schema.get("anyOf") or (schema.get("allOf") or [{}])[0].get("anyOf")
        if any_of != _INT_OR_STRING:
            errors.append(f"{path}: x-kubernetes-int-or-string needs anyOf [integer, string]")
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if schema.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties: false is not allowed")
    if schema.get("type") == "array" and "items" not in schema:
        errors.append(f"{path}: array without items")
    if schema.get("x-kubernetes-preserve-unknown-fields") is False:
        errors.append(f"{path}: x-kubernetes-preserve-unknown-fields: false is not allowed")
    keys = schema.get("x-kubernetes-list-map-keys")
    if keys:
        item = schema.get("items", {})
        for k in keys:
            if k not in item.get("required", []) and "default" not in item.get("properties", {}).get(k, {}):
                errors.append(f"{path}: list map key {k} must be required or defaulted")
    for name, sub in (schema.get("properties") or {}).items():
        errors += structural_errors(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        errors += structural_errors(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        errors += structural_errors(schema["items"], f"{path}[]")
    for junctor in ("anyOf", "allOf", "oneOf"):
        if schema.get("x-kubernetes-int-or-string") and schema.get(junctor) == _INT_OR_STRING:
            continue  # the one type-bearing anyOf the API server accepts
        for i, sub in enumerate(schema.get(junctor) or []):
            errors += structural_errors(sub, f"{path}.{junctor}[{i}]", in_junctor=True)
    if "default" in schema:
        errors += [f"{path}: default invalid: {e}" for e in validate(schema["default"], schema, path)]
    return errors


def preserve_unknown_paths(schema: Mapping[str, Any], path: str = "") -> list[str]:
    found = [path] if schema.get("x-kubernetes-preserve-unknown-fields") else []
    for name, sub in (schema.get("properties") or {}).items():
        found += preserve_unknown_paths(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            found += preserve_unknown_paths(schema[key], f"{path}.{key}")
    return found


_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")


def check_core(value: Any, model: str | type, path: str = "") -> list[str]:
    """Strictly check `value` against a kubernetes client model (e.g. "V1PodTemplateSpec")."""
    if isinstance(model, str):
        m = _LIST.match(model)
        if m:
            if not isinstance(value, list):
                return [f"{path}: must be a list"]
            return [e for i, v in enumerate(value) for e in check_core(v, m.group(1), f"{path}[{i}]")]
        m = _DICT.match(model)
        if m:
            if not isinstance(value, Mapping):
                return [f"{path}: must be a map"]
            return [e for k, v in value.items() for e in check_core(v, m.group(1), f"{path}.{k}")]
        if not model.startswith("V"):
            expected = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str,
                        "object": object}.get(model, object)
            if not isinstance(value, expected) or (model == "int" and isinstance(value, bool)):
                return [f"{path}: must be {model}, got {value!r}"]
            return []
        model = getattr(k8s, model)
    if not isinstance(value, Mapping):
        return [f"{path}: must be an object"]
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: unknown field of {model.__name__}")
            continue
        errors += check_core(item, model.openapi_types[attr], f"{path}.{key}")
    if not errors:
        try:
            model.from_dict(dict(value))
        except Exception as err:  # pydantic: required fields and types
            errors.append(f"{path}: {model.__name__}: {str(err).splitlines()[0:3]}")
    return errors
