"""The container images, for real: podman runs the images that scripts/build_images.sh builds.

No cluster here: each test runs containers the way a pod would run them (user 1000, a results folder owned
by 1000, the key in the environment, the MPI Operator's ssh Secret layout, mpirun from the operator's own
launcher command). A missing podman or image fails the test (the session fixture builds the images; a warm
build takes seconds). Containers get no network (`--network none`) or a podman network created with
`--internal` for this session: all traffic stays on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e import netns
from kestrel_operator.manifests.build import SSH_AUTH_MOUNT_PATH, WORKER_COMMAND
from kestrel_operator.manifests.commands import KEY_ENV, RESOURCE_ENV, launcher_command
from kestrel_operator.manifests.gpu_mapping import map_gpus
from tests.conftest import import_fashion_subset
from tests.distributed.conftest import write_spec
from tests.distributed.test_data_parallel import _assert_epochs_cover_the_set_once, _assert_ranks_identical
from tests.podman import podman_env as podman_env_of_this_machine

REPO = Path(__file__).resolve().parents[1]
KEY = "image-test-key-31"
UID = 1000
TIMEOUT = 900


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """The environment podman needs on this machine (CONTAINERS_CONF), as build_images.sh sets it."""
    return podman_env_of_this_machine()


@pytest.fixture(scope="session")
def images(podman_env) -> dict[str, str]:
    """name -> reference of the CPU trainer and operator images, built (or found up to date) now."""
    proc = in_host_netns(["bash", str(REPO / "scripts" / "build_images.sh"), "--only", "trainer,operator"],
                          capture_output=True, text=True, timeout=3600, env=podman_env)
    assert proc.returncode == 0, f"scripts/build_images.sh failed:\n{proc.stderr[-4000:]}"
    assert shutil.which("podman"), "podman is missing after scripts/build_images.sh"
    refs = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("image ")]
    return {ref.split("/", 1)[1].split(":")[0]: ref for ref in refs}


def podman(env: dict[str, str], *args: str, timeout: int = TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return in_host_netns(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def in_host_netns(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """podman in the machine's network namespace: the e2e session runs in a namespace of its own (netns.py),
    while podman's network helpers (netavark bridges, aardvark-dns, one per machine) live in the machine's."""
    return netns.run_in_host_netns(argv, **kw)


def run(env: dict[str, str], image: str, *cmd: str, opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """A throwaway container with no network."""
    return podman(env, "run", "--rm", "--network", "none", *opts, image, *cmd)


@pytest.fixture(scope="session")
def subset(tmp_path_factory) -> Path:
    """4 real Fashion-MNIST images per class per split, readable by uid 1000 in the containers."""
    return import_fashion_subset(tmp_path_factory.mktemp("image-data") / "fm", per_class=4)


def owned_dir(path: Path) -> Path:
    """A folder owned by uid 1000, like a results volume prepared for the pods."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def mount(host: Path, target: str | None = None, ro: bool = False) -> tuple[str, str]:
    return "-v", f"{host}:{target or host}{':ro' if ro else ''}"


def mpi_operator_ssh_secret(folder: Path) -> Path:
    """The MPI Operator's per-job ssh Secret as kubelet mounts it at sshAuthMountPath (v0.8.0,
    newSSHAuthSecret and setupSSHOnPod): an ECDSA P-521 key in PEM ('EC PRIVATE KEY'), its public key in
    authorized_keys format, projected as id_rsa, id_rsa.pub and authorized_keys; secret volumes are
    symlinks into a ..data folder, root-owned, mode 0644 (no defaultMode for a non-root mount path)."""
    key = ec.generate_private_key(ec.SECP521R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    data = folder / "..2026_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for name, content in (("id_rsa", private), ("id_rsa.pub", public), ("authorized_keys", public)):
        (data / name).write_bytes(content)
        (data / name).chmod(0o644)
        (folder / name).symlink_to(f"..data/{name}")
    (folder / "..data").symlink_to(data.name)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def network(podman_env) -> Iterator[str]:
    """A podman bridge network of this session, internal (no route out), with container-name DNS."""
    name = f"kestrel-img-{uuid.uuid4().hex[:8]}"
    proc = podman(podman_env, "network", "create", "--internal", name)
    assert proc.returncode == 0, proc.stderr
    yield name
    podman(podman_env, "network", "rm", "-f", name)


class Containers:
    """Detached containers of one test, removed at its end."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.names: list[str] = []

    def start(self, name: str, image: str, *cmd: str, opts: tuple[str, ...] = ()) -> str:
        proc = podman(self.env, "run", "-d", "--name", name, "--hostname", name, *opts, image, *cmd)
        assert proc.returncode == 0, proc.stderr
        self.names.append(name)
        return name

    def logs(self, name: str) -> str:
        proc = podman(self.env, "logs", name)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        for name in self.names:
            podman(self.env, "rm", "-f", "-t", "0", name)


@pytest.fixture
def containers(podman_env) -> Iterator[Containers]:
    c = Containers(podman_env)
    yield c
    c.remove()


def wait_for_sshd(c: Containers, worker: str, probe: tuple[str, ...]) -> None:
    """Until the worker's sshd answers (a container that runs ssh against it), like WaitForWorkersReady."""
    for _ in range(60):
        proc = podman(c.env, "run", "--rm", *probe, "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", worker,
                      "true", timeout=60)
        if proc.returncode == 0:
            return
        if "Permission denied" in proc.stderr:
            break
        time.sleep(1)
    raise AssertionError(f"sshd in {worker} never accepted the key:\n{proc.stderr}\n{c.logs(worker)}")


# --- tests ----------------------------------------------------------------------------------------------------

def test_images_run_as_uid_1000(images, podman_env):
    for name in ("kestrel-trainer", "kestrel-operator"):
        user = podman(podman_env, "image", "inspect", "--format", "{{.Config.User}}", images[name]).stdout.strip()
        assert user == str(UID), name
        proc = run(podman_env, images[name], "-u", opts=("--entrypoint", "id"))
        assert proc.returncode == 0 and proc.stdout.strip() == str(UID), (name, proc.stderr)


def test_trainer_image_ships_this_checkout_with_tensorflow_and_horovod(images, podman_env):
    image = images["kestrel-trainer"]
    host_env = dict(podman_env, PYTHONPATH=f"{REPO / 'trainer_image'}:{REPO / 'operator'}")
    for cli, module in (("kestrel", "kestrel_trainer.cli.main"), ("classification_tf1", "kestrel_trainer.cli.tao")):
        inside = run(podman_env, image, cli, "--help")
        assert inside.returncode == 0, inside.stderr
        here = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=host_env)
        assert here.returncode == 0, here.stderr
        assert inside.stdout == here.stdout, cli  # the image ships this checkout's CLI, not a stale one
        assert inside.stdout.startswith(f"usage: {cli} "), inside.stdout
        assert re.search(r"^\s+train\b", inside.stdout, re.M) or "{train," in inside.stdout, inside.stdout
    probe = ("import sys, tensorflow as tf, horovod.tensorflow as hvd; "
             "print(sys.version_info[:2], tf.__version__, hvd.mpi_built(), hvd.gloo_built())")
    proc = run(podman_env, image, "python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "(3, 11) 2.15.1 True True"
    operator = run(podman_env, images["kestrel-operator"], "--help")
    assert operator.returncode == 0 and "kestrel-operator" in operator.stdout, operator.stderr


def test_the_entrypoint_is_in_the_image_and_stops_its_command_on_sigterm(images, podman_env, containers):
    """`kestrel-worker`, PID 1 of the rank pods (WORKER_COMMAND), is installed as the checkout has it; as a
    container's PID 1 it passes `podman stop`'s SIGTERM on to its command (no rank runs here) and exits with it."""
    image = images["kestrel-trainer"]
    inside = run(podman_env, image, "kestrel-worker", "--help")
    here = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.worker", "--help"], capture_output=True,
                          text=True, env=dict(podman_env, PYTHONPATH=f"{REPO / 'trainer_image'}:{REPO / 'operator'}"))
    assert inside.returncode == 0 and inside.stdout == here.stdout, inside.stderr
    assert WORKER_COMMAND[0] == "kestrel-worker"
    name = containers.start(f"kestrel-entry-{uuid.uuid4().hex[:8]}", image, "kestrel-worker", "--", "sleep", "600",
                            opts=("--network", "none"))
    time.sleep(2)
    started = time.monotonic()
    stop = podman(podman_env, "stop", "-t", "30", name)
    took = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    code = podman(podman_env, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    logs = containers.logs(name)
    assert code == "143" and took < 10, (code, took, logs)  # sleep's SIGTERM, long before podman's SIGKILL
    assert "stop requested: no trainer rank runs in this container" in logs, logs


def test_trains_on_mounted_data_into_a_uid_1000_results_folder(images, podman_env, subset, tmp_path):
    """Read-only root file system (podman gives /tmp a tmpfs, as an emptyDir would), key in the env only."""
    from kestrel_trainer.model_io.files import load_model

    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    spec = write_spec(spec_dir, subset, epochs=1)
    results = owned_dir(tmp_path / "results")
    env = dict(podman_env, **{KEY_ENV: KEY})
    cmd = ["podman", "run", "--rm", "--network", "none", "--read-only", "-e", KEY_ENV,
           *mount(subset, ro=True), *mount(spec_dir, ro=True), *mount(results, "/results"),
           images["kestrel-trainer"], "kestrel", "train", "-e", str(spec), "-r", "/results"]
    assert KEY not in " ".join(cmd)  # the key never reaches a command line
    proc = in_host_netns(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert KEY not in proc.stdout + proc.stderr
    model = results / "weights" / "resnet_001.tlt"
    assert sorted(p.name for p in (results / "weights").iterdir()) == ["resnet_001.tlt"]
    for path in (model, results / "training.csv", results / "status.json"):
        assert path.stat().st_uid == UID, path
    assert not stat.S_IMODE(model.stat().st_mode) & 0o002
    assert b"HDF" not in model.read_bytes()[:64]  # encrypted, not a plain HDF5 file
    weights = load_model(model, KEY, compile=False).get_weights()  # the host decrypts it with the same key
    assert len(weights) > 10
    with pytest.raises(Exception):  # noqa: B017 - any failure: a wrong key must not load
        load_model(model, "not-the-key", compile=False)


def test_worker_sshd_accepts_the_mpi_operator_key_and_only_it(images, podman_env, network, containers, tmp_path):
    image = images["kestrel-trainer"]
    secret = mpi_operator_ssh_secret(tmp_path / "ssh")
    other = mpi_operator_ssh_secret(tmp_path / "other-ssh")
    worker = containers.start(f"{network}-w", image, *WORKER_COMMAND,
                              opts=("--network", network, "--read-only", *mount(secret, SSH_AUTH_MOUNT_PATH, ro=True)))
    client = ("--network", network, *mount(secret, SSH_AUTH_MOUNT_PATH, ro=True), image)
    wait_for_sshd(containers, worker, client)
    proc = podman(podman_env, "run", "--rm", *client, "ssh", worker, "id -u; hostname; echo $PATH")
    assert proc.returncode == 0, proc.stderr
    uid, host, _ = proc.stdout.split("\n", 2)
    assert (uid, host) == (str(UID), worker)
    logs = containers.logs(worker)
    assert "no hostkeys" not in logs and "Accepted publickey for kestrel" in logs
    refused = podman(podman_env, "run", "--rm", "--network", network,
                     *mount(other, SSH_AUTH_MOUNT_PATH, ro=True), image,
                     "ssh", "-o", "BatchMode=yes", worker, "true")
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr


def test_two_ranks_train_over_ssh_like_an_mpijob(images, podman_env, network, containers, subset, tmp_path):
    """Launcher + 2 workers as the MPI Operator runs them: hostfile at /etc/mpi, its OMPI_MCA_* env, the
    Secret at sshAuthMountPath, workers running the operator's WORKER_COMMAND, and the operator's mpirun line."""
    image = images["kestrel-trainer"]
    secret = mpi_operator_ssh_secret(tmp_path / "ssh")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    spec = write_spec(spec_dir, subset, epochs=1)
    results, debug = owned_dir(tmp_path / "results"), owned_dir(tmp_path / "debug")
    volumes = (*mount(subset, ro=True), *mount(spec_dir, ro=True), *mount(results, "/results"), *mount(debug),
               *mount(secret, SSH_AUTH_MOUNT_PATH, ro=True))
    workers = [containers.start(f"{network}-worker-{i}", image, *WORKER_COMMAND, opts=("--network", network, *volumes))
               for i in range(2)]
    hostfile_dir = tmp_path / "mpi"
    hostfile_dir.mkdir(mode=0o755)
    (hostfile_dir / "hostfile").write_text("".join(f"{w} slots=1\n" for w in workers))
    for w in workers:
        wait_for_sshd(containers, w, ("--network", network, *mount(secret, SSH_AUTH_MOUNT_PATH, ro=True), image))

    mapping = map_gpus(0, 2, 1)  # the CPU image: 2 CPU ranks, one per worker (--gpus 2 would fail: no GPU here)
    assert (mapping.ranks, mapping.workers, mapping.slots_per_worker) == (2, 2, 1)
    trainer = ["kestrel", "train", "-e", str(spec), "-r", "/results", "--gpus", "0", "--num_processes", "2"]
    cmd = launcher_command(trainer, mapping)
    at = cmd.index("mpirun") + 1  # under the image's entrypoint (kestrel-worker ... -- mpirun ...)
    cmd[at:at] = ["-x", "KESTREL_DEBUG_RANKS_DIR"]  # test-only: every rank's records, to compare them
    launcher_env = {
        KEY_ENV: KEY, "KESTREL_DEBUG_RANKS_DIR": str(debug), "K_MPI_JOB_ROLE": "launcher",
        "OMPI_MCA_orte_keep_fqdn_hostnames": "true", "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
        "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10",
        **{name: "" for name in RESOURCE_ENV},  # set in every pod by the operator; empty: no cluster here
    }
    env_opts = [opt for name in launcher_env for opt in ("-e", name)]
    proc = in_host_netns(
        ["podman", "run", "--rm", "--name", f"{network}-launcher", "--network", network, *env_opts, *volumes,
         *mount(hostfile_dir, "/etc/mpi", ro=True), image, *cmd],
        capture_output=True, text=True, timeout=TIMEOUT, env=dict(podman_env, **launcher_env))
    logs = "\n".join(containers.logs(w) for w in workers)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}\nworkers:\n{logs[-2000:]}"
    out = proc.stdout + proc.stderr
    assert "rank 0 of 2 (local rank 0), Horovod over MPI" in out
    assert logs.count("Accepted publickey for kestrel") >= 2  # both ranks were started over ssh
    _assert_ranks_identical(debug)
    _assert_epochs_cover_the_set_once(debug, subset, 1)
    assert sorted(p.name for p in (results / "weights").iterdir()) == ["resnet_001.tlt"]
    assert (results / "weights" / "resnet_001.tlt").stat().st_uid == UID
