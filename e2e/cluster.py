"""A real Kubernetes control plane, run from binaries built by e2e/build.sh.

There is no kind/k3d here: etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as plain
processes, kwok plays the kubelet for fake GPU nodes (it moves pods through their phases without running
anything), and node.py adds one real node (kubelet + containerd). The conftest runs all of it inside the
session's own network namespace (netns.py): components listen on 127.0.0.1, the API server on the
namespace's node address so pods can reach it. Every port is one the OS handed out, every process is
stopped by its own PID, and the temp dir with all logs is kept when something failed.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
BUILD_SCRIPT = E2E_DIR / "build.sh"
KWOK_STAGES = E2E_DIR / "kwok-stages.yaml"
# kwok-stages.yaml fails Job-owned pods (the MPI launcher) in this namespace instead of completing them.
LAUNCHER_FAILS_NAMESPACE = "e2e-launcher-fails"
# ... and keeps them Running in this one (a run that is still going), and leaves pods with this annotation
# to the test, which then patches their status the way the kubelet would.
LAUNCHER_RUNS_NAMESPACE = "e2e-launcher-runs"
KUBELET_BY_TEST_ANNOTATION = "e2e.kestrel.dev/kubelet"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# The MPI Operator's health endpoint is hard-coded to :8080 in v0.8.0 (cmd/mpi-operator/app/server.go);
# nothing contacts it, but a second process already on the port makes the operator exit.
MPI_OPERATOR_HEALTH_PORT = 8080

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok",
            "kubelet", "kube-proxy", "coredns", "containerd", "containerd-shim-runc-v2", "ctr")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_VIP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR


class KubectlError(RuntimeError):
    """A kubectl call failed; the message carries its stderr so a test failure says why."""


class ControlPlaneError(RuntimeError):
    """A component did not come up; the message names it and where its log is."""


def bin_dir() -> Path:
    """The versioned cache folder build.sh writes to (it owns the naming, so ask it)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def missing_binaries(folder: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(folder / name, os.X_OK)]


def free_port() -> int:
    """A loopback port free right now (the small race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------------------------------- keys

def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]
                     + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs])


def _issue(ca_key: rsa.RSAPrivateKey, ca_name: x509.Name, subject: x509.Name, usage: x509.ObjectIdentifier,
           sans: Sequence[x509.GeneralName] = ()) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A leaf certificate signed by our CA, for serving (SERVER_AUTH) or as a client identity (CLIENT_AUTH)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(folder: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    crt_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return crt_path, key_path


def issue_client_cert(pki: dict[str, Path], stem: str, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
    """A client certificate from our CA (the API server authenticates it as `user` in `groups`)."""
    ca_cert = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes())
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    cert, key = _issue(ca_key, ca_cert.subject, _name(user, groups), x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    crt_path, key_path = _write_pair(pki["ca.crt"].parent, stem, cert, key)
    pki[f"{stem}.crt"], pki[f"{stem}.key"] = crt_path, key_path
    return crt_path, key_path


def make_pki(folder: Path, ips: Sequence[str] = ("127.0.0.1",)) -> dict[str, Path]:
    """A CA, an API-server serving cert for `ips` and the in-cluster names, and the service-account key pair.

    Our own CA (rather than the API server's self-signed cert) lets every client verify TLS instead
    of skipping verification, the way a real cluster's kubeconfig does; it also signs the client
    certificates of the kubelet and of the API server towards the kubelet (issue_client_cert).
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name("kestrel-e2e-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local"),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys([*ips, SERVICE_VIP])),
    ]
    srv_cert, srv_key = _issue(ca_key, ca_name, _name("kube-apiserver"),
                               x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, sans)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = {
        "ca.crt": folder / "ca.crt",
        "ca.key": folder / "ca.key",
        "sa.key": folder / "sa.key",
        "sa.pub": folder / "sa.pub",
    }
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca.key"], ca_key)
    paths["apiserver.crt"], paths["apiserver.key"] = _write_pair(folder, "apiserver", srv_cert, srv_key)
    _write_key(paths["sa.key"], sa_key)
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


# ----------------------------------------------------------------------------------------- processes

@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to this PID, then SIGKILL if it has not gone within timeout."""
        if not self.alive():
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL with no grace: used to crash a component on purpose."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=15)


def listening_addresses(pid: int) -> set[str]:
    """`ip:port` of every TCP socket process `pid` listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add(f"{ip}:{int(hex_port, 16)}")
    return found


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the test process dies, so a killed pytest
    (a CI timeout, SIGKILL) leaves no etcd or API server behind. Best effort: no-op where prctl is absent."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25,
    proc: Process | None = None,
) -> None:
    """Poll check() until true; fail early if proc died, with its log tail in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ControlPlaneError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}; "
                f"log {proc.log}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet is any error; the timeout reports it
            pass
        time.sleep(interval)
    tail = f"; log {proc.log}:\n{proc.log_tail()}" if proc is not None else ""
    raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


# ------------------------------------------------------------------------------------ control plane

@dataclass
class ControlPlane:
    """The running cluster: its addresses, credentials, processes and a kubectl bound to it."""

    bin: Path
    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    processes: dict[str, Process] = field(default_factory=dict)
    apiserver_port: int = 0
    etcd_port: int = 0
    pki: dict[str, Path] = field(default_factory=dict)
    # Where the API server listens: the session network namespace's node address (netns.py), so pods on a
    # real node's bridge reach it too; 127.0.0.1 when run without one (kwok-only use of this module).
    address: str = "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for anything that talks to this cluster: KUBECONFIG set, proxies ignored."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy"}}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{self.address}"
        env.update(extra)
        return env

    # -- processes
    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        handle.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(map(str, argv))}\n".encode())
        handle.flush()
        popen = subprocess.Popen(
            [str(a) for a in argv], stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env if env is not None else self.env(), cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        handle.close()
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    def stop_all(self) -> None:
        """Stop every process we started, newest first, each by its own PID."""
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    # -- HTTP against the API server (verified TLS, bearer token)
    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki["ca.crt"]))

    def get_json(self, path: str, accept: str = "application/json") -> dict:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept}
        req = urllib.request.Request(self.server + path, headers=headers)
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def table(self, path: str) -> list[dict[str, object]]:
        """The server-side Table (what `kubectl get` prints) as one {column name: cell} per row."""
        table = self.get_json(path, accept="application/json;as=Table;v=v1;g=meta.k8s.io")
        names = [c["name"] for c in table["columnDefinitions"]]
        return [dict(zip(names, row["cells"], strict=True)) for row in table["rows"]]

    def readyz(self) -> bool:
        req = urllib.request.Request(self.server + "/readyz", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as resp:  # noqa: S310
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # -- kubectl
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.bin / "kubectl"), *args], input=input, capture_output=True, text=True,
            env=self.env(), timeout=timeout,
        )
        if check and out.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def apply(self, manifest: str | dict | list, namespace: str | None = None) -> str:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(
            manifest if isinstance(manifest, list) else [manifest]
        )
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input=text).stdout

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.kubectl(*args).stdout)

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
        if namespace:
            args += ["-n", namespace]
        return bool(self.kubectl(*args).stdout.strip())


def write_kubeconfig(cp: ControlPlane) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cp.server, "certificate-authority": str(cp.pki["ca.crt"])}}],
        "users": [{"name": "admin", "user": {"token": cp.token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        "current-context": "e2e",
    }
    cp.kubeconfig.write_text(yaml.safe_dump(config))
    cp.kubeconfig.chmod(0o600)


def start_etcd(cp: ControlPlane) -> None:
    client, peer = free_port(), free_port()
    cp.etcd_port = client
    proc = cp.start("etcd", [
        cp.bin / "etcd", "--name", "e2e", "--data-dir", cp.workdir / "etcd",
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"e2e=http://127.0.0.1:{peer}",
        "--unsafe-no-fsync=true", "--log-level", "warn",
    ])

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=2) as resp:  # noqa: S310
            return json.loads(resp.read()).get("health") == "true"

    wait_for("etcd /health", healthy, timeout=60, proc=proc)


def start_apiserver(cp: ControlPlane) -> None:
    cp.apiserver_port = free_port()
    kubelet_client = issue_client_cert(cp.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                       ["system:masters"])
    # The `kubernetes` Service's endpoint is the advertise address; Endpoints validation rejects 127.0.0.0/8,
    # so without a namespace address (kwok-only use) the reconciler is off instead of failing every 10 s.
    # Pods get ServiceAccount tokens (admission plugin ServiceAccount, on by default): real pods use them.
    reconciler = ["--endpoint-reconciler-type=none"] if ipaddress.ip_address(cp.address).is_loopback else []
    tokens = cp.workdir / "tokens.csv"
    tokens.write_text(f'{cp.token},admin,admin,"system:masters"\n')
    tokens.chmod(0o600)
    proc = cp.start("kube-apiserver", [
        cp.bin / "kube-apiserver",
        f"--etcd-servers=http://127.0.0.1:{cp.etcd_port}",
        f"--bind-address={cp.address}", f"--advertise-address={cp.address}",
        f"--secure-port={cp.apiserver_port}",
        f"--tls-cert-file={cp.pki['apiserver.crt']}", f"--tls-private-key-file={cp.pki['apiserver.key']}",
        f"--cert-dir={cp.workdir / 'apiserver-certs'}",
        f"--token-auth-file={tokens}",
        # Client certificates from our CA: the kubelet authenticates as system:node:<name> (group system:nodes),
        # which the Node authorizer serves; the API server shows its own to the kubelet (logs, exec).
        f"--client-ca-file={cp.pki['ca.crt']}",
        f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
        # The node's name resolves nowhere (the namespace has no resolver for it): dial its address.
        "--kubelet-preferred-address-types=InternalIP",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={cp.pki['sa.pub']}",
        f"--service-account-signing-key-file={cp.pki['sa.key']}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        *reconciler,
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=1",
    ])
    wait_for("kube-apiserver /readyz", cp.readyz, timeout=180, interval=0.5, proc=proc)
    write_kubeconfig(cp)


def restart_apiserver(cp: ControlPlane, down_seconds: float = 0.0) -> None:
    """Stop kube-apiserver (SIGTERM) and start it again with the same flags and port; etcd keeps the data.
    Every client (controllers, kwok, our operator) sees its connections and watches drop. Call it from the
    main thread: children die with the thread that started them (PR_SET_PDEATHSIG)."""
    proc = cp.processes["kube-apiserver"]
    argv = [str(a) for a in proc.popen.args]
    proc.stop()
    time.sleep(down_seconds)
    new = cp.start("kube-apiserver", argv)
    wait_for("kube-apiserver /readyz after restart", cp.readyz, timeout=180, interval=0.5, proc=new)


def _component_kubeconfig(cp: ControlPlane) -> list[str]:
    return [f"--kubeconfig={cp.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]


def start_controller_manager(cp: ControlPlane) -> None:
    proc = cp.start("kube-controller-manager", [
        cp.bin / "kube-controller-manager", *_component_kubeconfig(cp),
        f"--secure-port={free_port()}",
        f"--cert-dir={cp.workdir / 'kcm-certs'}",
        f"--service-account-private-key-file={cp.pki['sa.key']}",
        f"--root-ca-file={cp.pki['ca.crt']}",
        "--v=1",
    ])
    # The kube-system ServiceAccount controller is one of the first to start: use it as the ready signal.
    wait_for(
        "kube-controller-manager (default ServiceAccount created)",
        lambda: cp.exists("serviceaccount", "default", "default"), timeout=120, interval=1, proc=proc,
    )


def _component_healthy(port: int) -> bool:
    """/healthz of a component's own serving port (self-signed cert, always-allowed path)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # its throwaway self-signed cert; only /healthz is read
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:  # noqa: S310
        return resp.status == 200


def start_scheduler(cp: ControlPlane) -> None:
    port = free_port()
    proc = cp.start("kube-scheduler", [
        cp.bin / "kube-scheduler", *_component_kubeconfig(cp), f"--secure-port={port}", "--v=1",
    ])
    wait_for("kube-scheduler /healthz", lambda: _component_healthy(port), timeout=60, proc=proc)


def fake_gpu_node(name: str, gpus: int = 8) -> dict:
    """A Node that kwok takes over (by annotation) and reports Ready, with GPU capacity to schedule on."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true"},
        },
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def start_kwok(cp: ControlPlane, nodes: Sequence[str]) -> None:
    proc = cp.start("kwok", [
        cp.bin / "kwok", f"--kubeconfig={cp.kubeconfig}", f"--config={KWOK_STAGES}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{free_port()}",
        "--cidr=10.0.1.0/24",
        "--node-lease-duration-seconds=40",
    ])
    for name in nodes:
        cp.apply(fake_gpu_node(name))

    def all_ready() -> bool:
        for name in nodes:
            conds = cp.get("node", name).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return False
        return True

    wait_for(f"kwok nodes {list(nodes)} Ready", all_ready, timeout=90, interval=1, proc=proc)


DEFAULT_GPU_NODES = ("gpu-node-0", "gpu-node-1", "gpu-node-2", "gpu-node-3")


def start_control_plane(bin: Path, workdir: Path, gpu_nodes: Sequence[str] = DEFAULT_GPU_NODES,
                        address: str = "127.0.0.1") -> ControlPlane:
    """etcd -> kube-apiserver (on `address`) -> controller-manager -> scheduler -> kwok with fake GPU nodes.

    On any failure everything started so far is stopped before the error propagates.
    """
    cp = ControlPlane(bin=bin, workdir=workdir, address=address)
    cp.pki = make_pki(workdir / "pki", ips=["127.0.0.1", address])
    try:
        start_etcd(cp)
        start_apiserver(cp)
        start_controller_manager(cp)
        start_scheduler(cp)
        start_kwok(cp, gpu_nodes)
    except BaseException:
        cp.stop_all()
        raise
    return cp


API_ONLY_BINARIES = ("etcd", "kube-apiserver", "kubectl")


def start_api_only(bin: Path, workdir: Path) -> ControlPlane:
    """etcd and kube-apiserver only: enough for tests and benchmarks in which objects are only created and
    read (no pods are scheduled or run, nothing is garbage-collected)."""
    cp = ControlPlane(bin=bin, workdir=workdir)
    cp.pki = make_pki(workdir / "pki")
    try:
        start_etcd(cp)
        start_apiserver(cp)
    except BaseException:
        cp.stop_all()
        raise
    return cp


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ MPI and our operator

def mpijob_crd_paths() -> list[Path]:
    """The hand-written MPIJob v2beta1 CRD lives with our CRDs (crds/test/); any file naming mpijob."""
    return sorted(p for p in (REPO_ROOT / "crds").rglob("*.yaml") if "mpijob" in p.name.lower())


def our_crd_paths() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "crds").glob("*.yaml") if "mpijob" not in p.name.lower())


def apply_crds(cp: ControlPlane, paths: Sequence[Path]) -> list[str]:
    """Apply CRD files with the built kubectl and wait until the API server serves each one."""
    names: list[str] = []
    for path in paths:
        out = cp.kubectl("apply", "--server-side", "-f", str(path)).stdout
        names += [
            line.split()[0].split("/", 1)[1]
            for line in out.splitlines()
            if line.startswith("customresourcedefinition")
        ]
    for name in names:
        cp.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return names


def start_mpi_operator(cp: ControlPlane) -> Process:
    """The real Kubeflow MPI Operator (v2 controller), cluster-scoped, leader lock in `mpi-operator`."""
    if port_in_use(MPI_OPERATOR_HEALTH_PORT):
        raise ControlPlaneError(
            f"port {MPI_OPERATOR_HEALTH_PORT} is taken: the MPI Operator v0.8.0 hard-codes its health port "
            "there and would exit; free it or run with KESTREL_E2E_MPI=double"
        )
    cp.kubectl("create", "namespace", "mpi-operator", check=False)
    proc = cp.start("mpi-operator", [
        cp.bin / "mpi-operator", f"--kubeConfig={cp.kubeconfig}", "--lock-namespace=mpi-operator",
        "--threadiness=4", "--kube-api-qps=50", "--kube-api-burst=100", "--v=2",
    ])
    wait_for(
        "MPI Operator leader lease", lambda: cp.exists("lease", "mpi-operator", "mpi-operator"),
        timeout=60, interval=0.5, proc=proc,
    )
    return proc


def start_mpi_test_double(cp: ControlPlane) -> Process:
    """Our Python stand-in for the MPI Operator, used only when its binary is absent (see its docstring)."""
    import sys

    proc = cp.start("mpijob-test-double", [sys.executable, E2E_DIR / "mpijob_test_double.py"])
    wait_for("MPIJob test double ready", lambda: "ready" in proc.log.read_text(), timeout=60, proc=proc)
    return proc


@dataclass
class Operator:
    """Our operator (`kestrel-operator run`) as a subprocess, so tests can kill and restart it."""

    cp: ControlPlane
    argv: list[str]
    env: dict[str, str]
    proc: Process | None = None
    starts: int = 0

    def start(self) -> Process:
        self.starts += 1
        self.proc = self.cp.start(f"kestrel-operator-{self.starts}", self.argv, env=self.env, cwd=REPO_ROOT)
        time.sleep(0.5)
        if not self.proc.alive():
            raise ControlPlaneError(f"kestrel-operator exited at once; log {self.proc.log}:\n{self.proc.log_tail()}")
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log_text(self) -> str:
        return "\n".join(
            p.log.read_text(errors="replace") for n, p in self.cp.processes.items() if n.startswith("kestrel-operator")
        )
