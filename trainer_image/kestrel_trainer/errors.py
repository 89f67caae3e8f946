"""User-facing errors.

Anything a user can cause (a bad spec, a missing folder, a wrong key) raises a KestrelError subclass
with a one-line message naming the file, line or field; the CLI prints it and exits with
`exit_code`, never with a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class KestrelError(Exception):
    """A user error: printed as one line, exit code `exit_code`."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class SpecError(KestrelError):
    """A spec file that does not parse or does not validate (exit code 2)."""

    exit_code = 2


class DataError(KestrelError):
    """A dataset problem: missing folder, empty class, mismatched classes, bad images."""

    exit_code = 2


class ModelFileError(KestrelError):
    """A model file that cannot be read: wrong key, truncated or corrupt (exit code 2)."""

    exit_code = 2
