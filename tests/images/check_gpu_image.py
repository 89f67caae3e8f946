"""Checks inside the built GPU trainer image, without a GPU (issue 31 item 1). Not part of the unit suite (the image
takes 15 minutes and 5.4 GB to build, never in CI); run on demand, and it fails (never skips) without the image:

    bash scripts/build_images.sh --only trainer-gpu
    .venv/bin/python -m pytest tests/images/check_gpu_image.py        # KESTREL_GPU_IMAGE=REF for another image

What it proves: TensorFlow is a CUDA 12.2 / cuDNN 8 build carrying PTX that sm_80 and newer compile at start;
every CUDA, cuDNN and NCCL library TensorFlow and Horovod open resolves with the image's own environment AND when a
pod replaces LD_LIBRARY_PATH; a driver mounted GKE-style under /usr/local/nvidia/lib64 is the one loaded; the NVIDIA
container runtime's variables are set; Horovod is built as the image's label says; `kestrel doctor --gpus 1` fails
on the missing GPU and driver while the libraries pass. The driver is a stand-in compiled here that answers
cuDriverGetVersion only: no GPU and no NVIDIA driver exist on this machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fake_driver import compile_fake_driver
from tests.podman import podman_env

REPO = Path(__file__).resolve().parents[2]
VERSION = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
IMAGE = os.environ.get("KESTREL_GPU_IMAGE", f"localhost/kestrel-trainer-gpu:{VERSION}")
WHEELS = "/opt/kestrel/venv/lib/python3.11/site-packages/nvidia/"
DRIVER_DIR = "/usr/local/nvidia/lib64"  # where GKE's device plugin mounts the driver


PODMAN_ENV = podman_env()


@pytest.fixture(scope="module")
def image() -> dict:
    proc = subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True, text=True, env=PODMAN_ENV)
    if proc.returncode != 0:
        pytest.fail(f"no image {IMAGE}: build it with `bash scripts/build_images.sh --only trainer-gpu` "
                    "(or set KESTREL_GPU_IMAGE)")
    return json.loads(proc.stdout)[0]


def _run(*argv: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = (),
         timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = ["podman", "run", "--rm", "--network", "none"]
    for name, value in (env or {}).items():
        cmd += ["-e", f"{name}={value}"]
    for volume in volumes:
        cmd += ["-v", volume]
    return subprocess.run([*cmd, IMAGE, *argv], capture_output=True, text=True, timeout=timeout, env=PODMAN_ENV)


def _python(code: str, **kwargs) -> dict:
    proc = _run("python", "-c", code, **kwargs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _libraries_code(need_gpu: bool) -> str:
    return ("import json, os; from kestrel_trainer.train import doctor; "
            f"print(json.dumps([c.__dict__ for c in doctor.libraries(os.environ, need_gpu={need_gpu})]))")


def test_the_nvidia_runtimes_variables_and_a_non_root_user(image):
    env = dict(item.split("=", 1) for item in image["Config"]["Env"])
    assert env["LD_LIBRARY_PATH"].split(":")[0] == DRIVER_DIR
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.2"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert image["Config"]["User"] not in ("", "0", "root")


def test_tensorflow_is_a_cuda_12_2_build_with_ptx_for_sm_80_and_newer(image):
    info = _python("import json, tensorflow as tf; i = tf.sysconfig.get_build_info(); "
                   "print(json.dumps({'cuda': tf.test.is_built_with_cuda(), 'version': i.get('cuda_version'), "
                   "'cudnn': i.get('cudnn_version'), 'caps': i.get('cuda_compute_capabilities')}))")
    assert info["cuda"] is True and info["version"] == "12.2" and info["cudnn"] == "8"
    # PTX (compute_XY) of 8.0 is what sm_80, sm_86, sm_89 and sm_90 GPUs compile at start: no SASS for them.
    assert "compute_80" in info["caps"], info["caps"]


def test_every_library_resolves_with_the_images_environment(image):
    libraries, driver = _python(_libraries_code(need_gpu=False))
    assert libraries["status"] == "PASS", libraries["detail"]
    for name, path in re.findall(r"(\S+) -> (\S+?)(?:,|$)", libraries["detail"]):
        assert path.startswith(WHEELS), (name, path)
    assert driver["status"] == "INFO" and "no libcuda.so.1" in driver["detail"]


def test_a_pod_that_replaces_ld_library_path_and_a_gke_style_driver_mount(image, tmp_path):
    """A pod spec that sets LD_LIBRARY_PATH replaces the image's: the wheels' libraries still resolve (the loader's
    cache), and the driver mounted under /usr/local/nvidia/lib64 is the one loaded."""
    driver_dir = compile_fake_driver(tmp_path / "nvidia-lib64", 12040).parent
    for env in ({"LD_LIBRARY_PATH": DRIVER_DIR}, {}):
        libraries, driver = _python(_libraries_code(need_gpu=True), env=env,
                                    volumes=(f"{driver_dir}:{DRIVER_DIR}:ro",))
        assert libraries["status"] == "PASS", (env, libraries["detail"])
        assert (driver["status"], driver["detail"]) == ("INFO", f"{DRIVER_DIR}/libcuda.so.1, supports CUDA 12.4")


def test_horovod_is_built_as_the_label_says(image):
    nccl = image["Config"]["Labels"]["dev.kestrel.horovod-nccl"]
    built = _python("import json, horovod.tensorflow as hvd; print(json.dumps({'nccl': bool(hvd.nccl_built()), "
                    "'mpi': bool(hvd.mpi_built()), 'gloo': bool(hvd.gloo_built())}))")
    assert built == {"nccl": nccl == "required", "mpi": True, "gloo": True}


def test_doctor_asked_for_a_gpu_fails_on_the_gpu_and_the_driver_not_on_the_libraries(image):
    proc = _run("kestrel", "doctor", "--gpus", "1")
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert lines["PASS libraries"] and lines["FAIL driver"] and lines["FAIL gpus"], proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("FAIL doctor:")
