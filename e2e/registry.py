"""An OCI registry for the e2e suite: the CNCF Distribution registry (gomod/registry, built by build.sh) in the
control plane's network namespace, on its address (port REGISTRY_PORT), the way users have one: TLS with a serving
certificate from the e2e CA (certs.py) and htpasswd (bcrypt) authentication.

The user and password are made per session (secrets.token_hex), never written in the repo: the htpasswd file holds
only the bcrypt hash, made by build.sh's `htpasswd` helper from the password on its stdin (Go's x/crypto bcrypt, the
package the registry checks it with). Pushers get the credentials through the environment or an auth file (see
`auth_file`), never on a command line. The real nodes' containerd trusts the e2e CA for this address through its
certs.d hosts.toml (node.py `registry_hosts`), so the kubelet pulls with a Pod's imagePullSecret.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2e import cluster as cl
from e2e.certs import issue_serving_cert

REGISTRY_PORT = 5000  # node.py's containerd hosts.toml names the same port
USER = "kestrel-e2e"


def binaries() -> tuple[Path, Path]:
    """(registry, htpasswd) of this checkout's gomod/registry (build.sh --registry)."""
    out = subprocess.run(["bash", str(cl.BUILD_SCRIPT), "--registry"], capture_output=True, text=True, check=True)
    registry = Path(out.stdout.strip().splitlines()[-1])
    return registry, registry.with_name("htpasswd-" + registry.name.removeprefix("registry-"))


def host_of(address: str) -> str:
    """HOST:PORT of the registry on the control plane's address (what image references and hosts.toml use)."""
    return f"{address}:{REGISTRY_PORT}"


@dataclass
class Registry:
    host: str  # 10.250.0.2:5000
    user: str
    password: str
    ca: Path  # the e2e CA, which signed the registry's serving certificate
    folder: Path
    process: cl.Process

    def auth_file(self, user: str | None = None, password: str | None = None) -> Path:
        """A containers-auth.json / docker config.json with the credentials for `host` (podman's REGISTRY_AUTH_FILE,
        helm's --registry-config); mode 0600. Other credentials (a wrong password) for the negative tests."""
        user, password = user or self.user, password or self.password
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        path = self.folder / f"auth-{secrets.token_hex(4)}.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def docker_config_json(self, user: str | None = None, password: str | None = None) -> str:
        """The .dockerconfigjson of a kubernetes.io/dockerconfigjson Secret (an imagePullSecret) for `host`."""
        user, password = user or self.user, password or self.password
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return json.dumps({"auths": {self.host: {"username": user, "password": password, "auth": token}}})

    def get(self, path: str, authenticated: bool = True) -> tuple[int, dict]:
        """GET https://HOST/v2/PATH verifying TLS against the e2e CA; (status, JSON body)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(f"https://{self.host}/v2/{path}")  # noqa: S310 - our own https URL
        if authenticated:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # noqa: S310
                body = resp.read()
                return resp.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def stop(self) -> None:
        self.process.stop()


def start(cp: cl.ControlPlane) -> Registry:
    """The registry on the control plane's address (this process's network namespace), storage under the session's
    folder, TLS and htpasswd; returned once /v2/ answers 200 with the credentials and 401 without."""
    registry_bin, htpasswd_bin = binaries()
    for exe in (registry_bin, htpasswd_bin):
        if not exe.exists():
            raise cl.ControlPlaneError(f"{exe} missing: `bash e2e/build.sh` builds the registry (gomod/registry)")
    folder = cp.workdir / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    host = host_of(cp.address)
    crt, key = issue_serving_cert(cp.pki, "registry", [cp.address])
    password = secrets.token_hex(16)
    hashed = subprocess.run([str(htpasswd_bin), USER], input=password + "\n", capture_output=True, text=True,
                            check=True).stdout
    htpasswd = folder / "htpasswd"
    htpasswd.touch(mode=0o600)
    htpasswd.write_text(hashed)
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
        "http": {"addr": host, "secret": secrets.token_hex(16),
                 "tls": {"certificate": str(crt), "key": str(key)}},
        "auth": {"htpasswd": {"realm": "kestrel-e2e", "path": str(htpasswd)}},
    }
    config_path = folder / "config.yml"
    config_path.touch(mode=0o600)
    config_path.write_text(yaml.safe_dump(config))
    # No tracing exporter: there is no collector to send spans to.
    proc = cp.start("registry", [registry_bin, "serve", config_path],
                    env=cp.env(OTEL_TRACES_EXPORTER="none", OTEL_SDK_DISABLED="true"))
    reg = Registry(host=host, user=USER, password=password, ca=cp.pki["ca.crt"], folder=folder, process=proc)

    def up() -> bool:
        return reg.get("", authenticated=True)[0] == 200 and reg.get("", authenticated=False)[0] == 401

    cl.wait_for(f"registry on https://{host}/v2/", up, timeout=60, interval=0.5, proc=proc)
    return reg

