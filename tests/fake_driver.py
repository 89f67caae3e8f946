"""A stand-in for the NVIDIA driver's libcuda.so.1, compiled with gcc: it answers cuDriverGetVersion and nothing
else (no GPU or driver exists here). Used to check where a driver is found and how its version is judged."""

from __future__ import annotations

import subprocess
from pathlib import Path


def compile_fake_driver(folder: Path, version: int) -> Path:
    """folder/libcuda.so.1 whose cuDriverGetVersion reports `version` (CUDA's 1000 * major + 10 * minor)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "driver.c"
    source.write_text(f"int cuDriverGetVersion(int *v) {{ *v = {version}; return 0; }}\n")
    out = folder / "libcuda.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    folder.chmod(0o755)
    return out
