"""The one error a user's resource can cause: InvalidSpec, carrying every field error found, not the first.

Like the MPI Operator's validation (`field.ErrorList`), each error names its field path and, where there is
one, the value: `spec.numProcesses: Invalid value: 4: gpus must be a multiple of numProcesses ...`. The
status message, the Event and `render` list them all on one line, joined with '; '.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

# Error types, worded as Kubernetes' apimachinery words them.
INVALID = "Invalid value"
REQUIRED = "Required value"
UNSUPPORTED = "Unsupported value"
FORBIDDEN = "Forbidden"
_NO_VALUE = object()


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return '"object"'
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class FieldError:
    """One problem: where (`field`, a path such as spec.volumes.data.subPath, or None for a message that names
    its place itself, like the spec loader's `... spec.experimentSpec:3: ...`), what kind, the value, why."""

    field: Optional[str]
    detail: str
    value: Any = _NO_VALUE
    type: Optional[str] = INVALID

    def __str__(self) -> str:
        if not self.field:
            return self.detail
        parts = [self.field]
        if self.type:
            parts.append(self.type)
        if self.value is not _NO_VALUE:
            parts.append(_show(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)


def invalid(field: Optional[str], detail: str, value: Any = _NO_VALUE) -> FieldError:
    return FieldError(field, detail, value, INVALID)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(field, detail, _NO_VALUE, REQUIRED)


def unsupported(field: str, value: Any, allowed: Iterable[str]) -> FieldError:
    return FieldError(field, "supported values: " + ", ".join(json.dumps(a) for a in allowed), value, UNSUPPORTED)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(field, detail, _NO_VALUE, FORBIDDEN)


class InvalidSpec(ValueError):
    """A resource (or its spec text) that cannot be turned into a run. Exit code 2 in `render`.

    `InvalidSpec("message", "spec.field")` is one error, shown as `spec.field: message`;
    `InvalidSpec([FieldError, ...])` several.
    """

    exit_code = 2  # the status reason it becomes is status/reasons.py's INVALID_SPEC

    def __init__(self, errors: str | FieldError | Sequence[FieldError], field: Optional[str] = None) -> None:
        if isinstance(errors, str):
            errors = [FieldError(field, errors, _NO_VALUE, None)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors: tuple[FieldError, ...] = tuple(errors)
        if not self.errors:
            raise ValueError("InvalidSpec needs at least one error")
        super().__init__("; ".join(str(e) for e in self.errors))

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def field(self) -> Optional[str]:
        """The first error's field path."""
        return self.errors[0].field

    @property
    def fields(self) -> list[Optional[str]]:
        return [e.field for e in self.errors]


class FieldErrors:
    """Collects errors while a resource is read; `raise_if_any()` at the end raises them all at once."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, error: FieldError) -> None:
        self.errors.append(error)

    def extend(self, errors: Iterable[FieldError]) -> None:
        self.errors.extend(errors)

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidSpec(self.errors)
