"""Reading what a program drew on a pseudo-terminal (tests of progress bars)."""

from __future__ import annotations

import os


def read_until_closed(fd: int) -> bytes:
    """Everything the terminal's side wrote to the controller `fd`, read until the side is closed (EIO): one
    read can return only part of it (the kernel hands a pty's output over asynchronously)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
