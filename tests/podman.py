"""podman on this machine: the environment it needs (CONTAINERS_CONF), as scripts/build_images.sh sets it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def podman_env() -> dict[str, str]:
    """os.environ plus `scripts/build_images.sh --print-env`'s variables."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_images.sh"), "--print-env"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {**os.environ, **dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)}
