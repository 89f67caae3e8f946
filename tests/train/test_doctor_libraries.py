"""`kestrel doctor`'s library and driver checks (issue 31 item 1), on this machine's real dynamic loader: which
file a name resolves to must be the one `ldconfig -p` lists or the one LD_LIBRARY_PATH puts first, a missing
library is a FAIL naming it, and the driver's CUDA version (CUDA's encoding, 1000 * major + 10 * minor) decides
whether it is new enough. The fake drivers are compiled here with gcc: they answer cuDriverGetVersion and nothing
else. The GPU image runs the same checks with its real CUDA libraries (tests/images/check_gpu_image.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from kestrel_trainer.train import doctor
from tests.fake_driver import compile_fake_driver

ZLIB = "libz.so.1"


def _cache_path(name: str) -> str:
    """Where the loader's cache (`ldconfig -p`) puts `name` for x86-64: an independent answer."""
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^\s*{re.escape(name)} \(libc6,x86-64\) => (\S+)$", listing, re.M)
    assert match, f"{name} is not in the loader's cache here"
    return os.path.realpath(match.group(1))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return {**env, **extra}


def test_a_name_resolves_to_the_file_the_loaders_cache_lists():
    found = doctor.resolve_libraries([ZLIB], _env())
    assert os.path.realpath(found[ZLIB]["path"]) == _cache_path(ZLIB)


def test_ld_library_path_comes_before_the_cache(tmp_path):
    shutil.copy(_cache_path(ZLIB), tmp_path / ZLIB)
    found = doctor.resolve_libraries([ZLIB], _env(LD_LIBRARY_PATH=f"/nonexistent:{tmp_path}"))
    assert found[ZLIB]["path"] == str(tmp_path / ZLIB)


def test_a_missing_library_is_a_fail_naming_it_and_the_path_searched(tmp_path):
    checks = doctor.libraries(_env(LD_LIBRARY_PATH=str(tmp_path)), need_gpu=False,
                              names=(ZLIB, "libkestrel-absent.so.7"))
    first = checks[0]
    assert first.status == "FAIL" and first.name == "libraries"
    assert "libkestrel-absent.so.7 not found" in first.detail and str(tmp_path) in first.detail
    assert ZLIB not in first.detail.split(" not found")[0]


def test_every_library_found_is_a_pass_listing_where(tmp_path):
    checks = doctor.libraries(_env(), need_gpu=False, names=(ZLIB,))
    assert checks[0].status == "PASS" and "1 of 1 resolve" in checks[0].detail
    assert os.path.realpath(checks[0].detail.split(" -> ")[1]) == _cache_path(ZLIB)


def test_no_driver_is_information_on_the_cpu_and_a_fail_when_gpus_are_asked_for(tmp_path):
    env = _env(LD_LIBRARY_PATH=str(tmp_path), NVIDIA_DRIVER_CAPABILITIES="utility")
    if "path" in doctor.resolve_libraries([doctor.DRIVER_LIBRARY], env)[doctor.DRIVER_LIBRARY]:
        raise AssertionError("this machine has an NVIDIA driver: the test assumes none (no GPU here)")
    cpu = doctor.libraries(env, need_gpu=False, names=(ZLIB,))[1]
    gpu = doctor.libraries(env, need_gpu=True, names=(ZLIB,))[1]
    assert (cpu.status, gpu.status) == ("INFO", "FAIL")
    assert "no libcuda.so.1" in gpu.detail and "NVIDIA_DRIVER_CAPABILITIES='utility'" in gpu.detail


def test_the_driver_in_a_device_plugins_folder_is_found_and_its_cuda_version_judged(tmp_path):
    """As GKE's device plugin mounts it: a folder first on LD_LIBRARY_PATH. 12.4 passes, 12.0 is a FAIL (older
    than 12.2), and a libcuda.so.1 without cuDriverGetVersion is not a driver."""
    new = compile_fake_driver(tmp_path / "new", 12040)
    line = doctor.libraries(_env(LD_LIBRARY_PATH=str(new.parent)), need_gpu=True, names=(ZLIB,))[1]
    assert (line.status, line.detail) == ("INFO", f"{new}, supports CUDA 12.4")

    old = compile_fake_driver(tmp_path / "old", 12000)
    line = doctor.libraries(_env(LD_LIBRARY_PATH=str(old.parent)), need_gpu=False, names=(ZLIB,))[1]
    assert line.status == "FAIL" and "supports CUDA 12.0" in line.detail and "needs 12.2" in line.detail

    bogus = tmp_path / "bogus"
    bogus.mkdir()
    shutil.copy(_cache_path(ZLIB), bogus / doctor.DRIVER_LIBRARY)
    line = doctor.libraries(_env(LD_LIBRARY_PATH=str(bogus)), need_gpu=True, names=(ZLIB,))[1]
    assert line.status == "FAIL" and "does not answer cuDriverGetVersion" in line.detail
