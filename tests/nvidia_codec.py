"""NVIDIA's own codec for the original's `.tlt`/`.etlt` encryption (PyPI `nvidia-eff-tao-encryption`, module
`eff_tao_encryption.tao_codec.tao_codec`), the independent oracle for Kestrel's implementation in
model_io/tao_crypto.py. It ships cp310 wheels only, so scripts/setup.sh installs it into its own Python 3.10
virtualenv (`.venv-nvidia-codec`, or $KESTREL_CODEC_VENV); the tests call it through a subprocess.

Without that virtualenv the tests that need it are skipped, and strict mode (CI, scripts/test.sh) fails them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

CODEC_VENV_ENV = "KESTREL_CODEC_VENV"
KEY_ENV = "NVIDIA_CODEC_KEY"

# encrypt_stream / decrypt_stream(in, out, passphrase, encryption=True): True selects the original TAO salt
# (the one every .tlt/.etlt the original wrote uses); the codec's default, "Random", picks another salt.
_DRIVER = """
import io, os, sys
from eff_tao_encryption.tao_codec import tao_codec
action = {"encrypt": tao_codec.encrypt_stream, "decrypt": tao_codec.decrypt_stream}[sys.argv[1]]
out = io.BytesIO()
action(io.BytesIO(sys.stdin.buffer.read()), out, os.environ[sys.argv[2]], True)
sys.stdout.buffer.write(out.getvalue())
"""


def codec_python() -> Path:
    """The Python 3.10 that has NVIDIA's codec; skips (a failure in strict mode) when setup has not made it."""
    venv = Path(os.environ.get(CODEC_VENV_ENV, REPO / ".venv-nvidia-codec"))
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"NVIDIA's codec is not installed: {python} is missing (bash scripts/setup.sh creates it)")
    return python


def _run(action: str, data: bytes, key: str) -> bytes:
    proc = subprocess.run([str(codec_python()), "-c", _DRIVER, action, KEY_ENV], input=data, capture_output=True,
                          env={**os.environ, KEY_ENV: key}, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def nvidia_encrypt(plain: bytes, key: str) -> bytes:
    """NVIDIA's encrypt_stream: 16-byte nonce, then the AES-CTR stream (a TF1 `.tlt`, or an `.etlt`'s payload)."""
    return _run("encrypt", plain, key)


def nvidia_decrypt(data: bytes, key: str) -> bytes:
    """NVIDIA's decrypt_stream of a nonce + stream."""
    return _run("decrypt", data, key)
