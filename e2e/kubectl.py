"""Talking to the e2e cluster's API server: kubectl bound to its kubeconfig, and direct HTTPS reads (verified TLS
against our CA, bearer token). `KubeAccess` is what a test needs to reach the cluster; components.ControlPlane
extends it with the processes it runs.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class KubectlError(RuntimeError):
    """A kubectl call failed; the message carries its stderr so a test failure says why."""


@dataclass
class KubeAccess:
    """The API server's address and credentials, a kubectl (from `bin`) and a kubeconfig (in `workdir`) for it."""

    bin: Path
    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    apiserver_port: int = 0
    pki: dict[str, Path] = field(default_factory=dict)
    # Where the API server listens: the session network namespace's node address (netns.py), so pods on a
    # real node's bridge reach it too; 127.0.0.1 when run without one (kwok-only use).
    address: str = "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for anything that talks to this cluster: KUBECONFIG set, proxies ignored."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy"}}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{self.address}"
        env.update(extra)
        return env

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



def write_kubeconfig(access: KubeAccess) -> None:
    """The admin kubeconfig (bearer token, our CA) at access.kubeconfig, readable by its owner only."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": access.server, "certificate-authority": str(access.pki["ca.crt"])}}],
        "users": [{"name": "admin", "user": {"token": access.token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        "current-context": "e2e",
    }
    access.kubeconfig.write_text(yaml.safe_dump(config))
    access.kubeconfig.chmod(0o600)
