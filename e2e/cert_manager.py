"""cert-manager's CRDs for the e2e suite (the deploy/crds files of the cert-manager Go module pinned by
gomod/certmanager, copied by e2e/build.sh): the chart's cert-manager option is checked against them with a
server-side dry run. cert-manager's controller and cainjector are not run here: the Go proxy does not serve the
modules of its commands, and this project does not copy their source.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from e2e.components import BUILD_SCRIPT


class CertManagerMissing(RuntimeError):
    """The cert-manager build is missing; the message says how to get it."""


@functools.cache
def prefix() -> Path:
    """build.sh's path prefix of this checkout's cert-manager build (keyed by gomod/certmanager's files)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--cert-manager"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def part(name: str) -> Path:
    """`crds`: the folder of the CRD files."""
    return prefix().with_name(f"{prefix().name}-{name}")


def ensure_built() -> None:
    """Copy the CRDs with build.sh when KESTREL_E2E_BUILD is set (as the cluster fixture does), else say how."""
    if not part("crds").is_dir() and os.environ.get("KESTREL_E2E_BUILD"):
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    if not part("crds").is_dir():
        raise CertManagerMissing(f"cert-manager CRDs missing at {prefix()}-crds: run `bash e2e/build.sh` or set "
                                 "KESTREL_E2E_BUILD=1")


def crd_paths() -> list[Path]:
    return sorted(part("crds").glob("*.yaml"))
