"""The one error a user's resource can cause: InvalidSpec.

It carries the field path (`spec.gpus`) so the status message and the `render` output point at what
to fix, the way the MPI Operator's validation errors name `spec.slotsPerWorker`.
"""

from __future__ import annotations


class InvalidSpec(ValueError):
    """A resource (or its spec text) that cannot be turned into a run. Exit code 2 in `render`."""

    reason = "InvalidSpec"
    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)

    @property
    def message(self) -> str:
        return str(self.args[0])
