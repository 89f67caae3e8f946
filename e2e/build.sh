#!/usr/bin/env bash
# Builds, once, the binaries of the local Kubernetes cluster that the e2e suite runs: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, the Kubeflow MPI Operator, helm, and
# for the real node kubelet, kube-proxy, CoreDNS and containerd v2 (daemon, runc shim, ctr; runc and the
# CNI plugins come from Debian: e2e/run.sh installs them). Nothing can be downloaded but Go modules and Debian packages, so
# each is compiled from its Go module, all of them in ONE wrapper module, gomod/cluster, whose go.mod is the only
# place their versions are pinned (one module graph: each shared library is compiled once for all binaries).
# Output goes to a cache folder OUTSIDE the repo, keyed by a hash of that module, and a binary already there is
# reused (a cold build takes tens of minutes on 2 cores; see e2e/README.md for the measured figures). Concurrent
# runs are safe: the second waits for the first (flock) and then reuses its binaries (.ci/run starts one before
# setup.sh and another with the images).
#
# The MPIJob CRD the suite installs is the MPI Operator's own, from the same Go module as its binary
# (manifests/base/kubeflow.org_mpijobs.yaml), copied next to the binaries as kubeflow.org_mpijobs.yaml.
#
# kstatus (gomod/kstatus, for e2e/kstatus.py: Flux's health verdict by the kstatus library) is a module of its own,
# outside gomod/cluster's key: it is built into the same bin folder as kstatus-<12 hex of its module's files>, so a
# change to it rebuilds only it; bin/kstatus links the latest one built.
#
# Kueue's controller (gomod/kueue: sigs.k8s.io/kueue/cmd/kueue, its own graph at k8s.io v0.35) is built the same way,
# as kueue-<12 hex of gomod/kueue's files>, with bin/kueue linking it. Its CRDs, RBAC and webhook manifests are not
# copied: `--kueue-config` prints the module's config/components folder in the Go module cache (go.sum verifies it).
# cert-manager's CRDs (gomod/certmanager pins the cert-manager Go module; for test_webhook_certs.py's dry run) are the
# files of that module's deploy/crds, copied to cert-manager-<12 hex of gomod/certmanager's files>-crds/.
#
# versitygw (gomod/versitygw: github.com/versity/versitygw/cmd/versitygw, an S3 gateway over a POSIX folder) is the
# S3-compatible server of the trainer's storage tests (tests/conftest.py). The unit suite needs it but not the cluster,
# so `--versitygw` builds only it, into CACHE_ROOT/s3/versitygw-<12 hex of gomod/versitygw's files> (scripts/test.sh
# calls it; reused when there), and prints that path; `--versitygw-path` only prints it.
#
# The OCI registry (gomod/registry: github.com/distribution/distribution/v3/cmd/registry, plus a 30-line htpasswd
# helper over golang.org/x/crypto/bcrypt, both of that module's graph) is built the same way, as
# registry-<12 hex of gomod/registry's files> and htpasswd-<same hex>, with bin/registry and bin/htpasswd linking them
# (e2e/registry.py; `--registry` prints the registry's path).
#
# Usage: e2e/build.sh              build what is missing, print the bin folder on the last line
#        e2e/build.sh --print      only print the bin folder (for the pytest fixture)
#        e2e/build.sh --kstatus    only print the path of this checkout's kstatus binary (for e2e/kstatus.py)
#        e2e/build.sh --kueue      only print the path of this checkout's Kueue controller binary
#        e2e/build.sh --kueue-config  print Kueue's config/components folder in the module cache (downloaded if needed)
#        e2e/build.sh --cert-manager  only print the path prefix of this checkout's cert-manager CRDs (append -crds)
#        e2e/build.sh --registry   only print the path of this checkout's registry binary (htpasswd-<hex> beside it)
#        e2e/build.sh --versitygw  build only the versitygw S3 server if missing; print its path on the last line
#        e2e/build.sh --versitygw-path  only print that path (for the tests' fixture)
#        e2e/build.sh --pinned MODULE  print MODULE's version in gomod/cluster/go.mod (the tests' expected versions)
#        e2e/build.sh --mpijob-crd print the path of the MPIJob CRD in the MPI Operator's Go module (downloaded
#                                  into the module cache if needed; the unit tests compare their copy with it)
# Env:   KESTREL_E2E_CACHE       cache root (default $HOME/.cache/kestrel-e2e)
#        KESTREL_E2E_JOBS        go build -p (default 2)
#        KESTREL_E2E_SKIP_MPI=1  do not build the MPI Operator (the suite then uses its test double)
#        KESTREL_E2E_SKIP_KUEUE=1  do not build Kueue (its tests then fail in strict mode, skip otherwise)
#        KESTREL_E2E_KEEP_DAYS   a folder of another key (older pins) unused this many days is removed (default 14)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/gomod/cluster"
# pinned MODULE: its version in gomod/cluster/go.mod's require block (read without the go command).
pinned() {
    local v
    v=$(awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$MOD/go.mod")
    [[ -n "$v" ]] || { echo "e2e/build.sh: $1 is not required in $MOD/go.mod" >&2; exit 1; }
    echo "$v"
}
K8S_VERSION=$(pinned k8s.io/kubernetes)
KWOK_VERSION=$(pinned sigs.k8s.io/kwok)
CONTAINERD_VERSION=$(pinned github.com/containerd/containerd/v2)
HELM_VERSION=$(pinned helm.sh/helm/v3)
CACHE_ROOT="${KESTREL_E2E_CACHE:-$HOME/.cache/kestrel-e2e}"
# The key: the Kubernetes release (readable) and a hash of everything that pins the graph and the sources.
KEY="k8s-${K8S_VERSION}_mod-$(cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/tools.go" "$MOD/coredns/main.go" \
    | sha256sum | cut -c1-12)"
BIN="$CACHE_ROOT/$KEY/bin"
KSTATUS_MOD="$HERE/gomod/kstatus"
KSTATUS="kstatus-$(cat "$KSTATUS_MOD/go.mod" "$KSTATUS_MOD/go.sum" "$KSTATUS_MOD/main.go" | sha256sum | cut -c1-12)"
KUEUE_MOD="$HERE/gomod/kueue"
KUEUE="kueue-$(cat "$KUEUE_MOD/go.mod" "$KUEUE_MOD/go.sum" "$KUEUE_MOD/tools.go" | sha256sum | cut -c1-12)"
CM_MOD="$HERE/gomod/certmanager"
CM="cert-manager-$(cat "$CM_MOD/go.mod" "$CM_MOD/go.sum" | sha256sum | cut -c1-12)"
REG_MOD="$HERE/gomod/registry"
REG_HASH=$(cat "$REG_MOD/go.mod" "$REG_MOD/go.sum" "$REG_MOD/tools.go" "$REG_MOD/htpasswd/main.go" | sha256sum | cut -c1-12)
VGW_MOD="$HERE/gomod/versitygw"
VGW_DIR="$CACHE_ROOT/s3"
VGW="versitygw-$(cat "$VGW_MOD/go.mod" "$VGW_MOD/go.sum" "$VGW_MOD/tools.go" | sha256sum | cut -c1-12)"

if [[ "${1:-}" == "--pinned" ]]; then
    pinned "${2:?--pinned needs a module path}"
    exit 0
fi
if [[ "${1:-}" == "--print" ]]; then
    echo "$BIN"
    exit 0
fi
if [[ "${1:-}" == "--kstatus" ]]; then
    echo "$BIN/$KSTATUS"
    exit 0
fi
if [[ "${1:-}" == "--kueue" ]]; then
    echo "$BIN/$KUEUE"
    exit 0
fi
if [[ "${1:-}" == "--registry" ]]; then
    echo "$BIN/registry-$REG_HASH"
    exit 0
fi
if [[ "${1:-}" == "--versitygw-path" ]]; then
    echo "$VGW_DIR/$VGW"
    exit 0
fi
if [[ "${1:-}" == "--cert-manager" ]]; then
    echo "$BIN/$CM"
    exit 0
fi

if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "e2e/build.sh: the go command is needed (Go >= 1.26)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# mpijob_crd_source: the CRD file inside the MPI Operator module that gomod/cluster/go.mod pins (go.sum
# verifies the module's content): the same module version as the mpi-operator binary.
mpijob_crd_source() {
    local mod=github.com/kubeflow/mpi-operator dir
    (cd "$MOD" && go mod download "$mod") >&2
    dir=$(cd "$MOD" && go list -m -f '{{.Dir}}' "$mod")
    [[ -f "$dir/manifests/base/kubeflow.org_mpijobs.yaml" ]] || {
        echo "e2e/build.sh: no manifests/base/kubeflow.org_mpijobs.yaml in $dir" >&2; return 1; }
    echo "$dir/manifests/base/kubeflow.org_mpijobs.yaml"
}
if [[ "${1:-}" == "--mpijob-crd" ]]; then
    mpijob_crd_source
    exit 0
fi
# kueue_config: config/components of the Kueue module that gomod/kueue/go.mod pins (CRDs, RBAC, webhook manifests).
kueue_config() {
    local mod=sigs.k8s.io/kueue dir
    (cd "$KUEUE_MOD" && go mod download "$mod") >&2
    dir=$(cd "$KUEUE_MOD" && go list -m -f '{{.Dir}}' "$mod")
    [[ -d "$dir/config/components/crd/bases" ]] || {
        echo "e2e/build.sh: no config/components/crd/bases in $dir" >&2; return 1; }
    echo "$dir/config/components"
}
if [[ "${1:-}" == "--kueue-config" ]]; then
    kueue_config
    exit 0
fi

VGW_ONLY=""
if [[ "${1:-}" == "--versitygw" ]]; then
    VGW_ONLY=1
    BIN="$VGW_DIR"  # build() below writes into $BIN; this mode touches nothing of the cluster's key
    mkdir -p "$BIN"
    exec 9>"$VGW_DIR/.lock"
    TIMES="$VGW_DIR/build-times.tsv"
else
    mkdir -p "$BIN"
    exec 9>"$CACHE_ROOT/$KEY/.lock"
    TIMES="$CACHE_ROOT/$KEY/build-times.tsv"
fi
flock 9  # another build.sh on the same key: wait for it, then reuse what it built
# The machine is shared: every compile runs at the lowest CPU priority (children inherit it), which counts among
# the processes of its session (with autogroup scheduling sessions share the CPU equally: e2e/README.md "CI time").
renice -n 19 $$ >/dev/null
JOBS="${KESTREL_E2E_JOBS:-2}"
export CGO_ENABLED=0
export GOFLAGS="-p=${JOBS} -buildvcs=false"

# Version stamps: without them /version and `kubectl version` report v0.0.0.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    K8S_LDFLAGS+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

# build NAME COMMAND...: runs COMMAND (which writes $out) unless $BIN/NAME exists; the binary is
# moved into place only when complete, so an interrupted build is redone rather than half-used.
build() {
    local name="$1"; shift
    if [[ -x "$BIN/$name" ]]; then
        echo "reuse  $BIN/$name"
        return 0
    fi
    out="$BIN/.$name.partial"
    echo "build  $name ..." >&2
    local start end
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    mv "$out" "$BIN/$name"
    local size
    size=$(du -m "$BIN/$name" | cut -f1)
    printf '%s\t%ss\t%sMiB\n' "$name" "$((end - start))" "$size" | tee -a "$TIMES" >&2
}

# Every binary is built with the same tags (a package's compile is shared only if its flags match): selinux and
# notest as Kubernetes' own build; no_btrfs/no_devmapper/no_zfs drop containerd snapshotters this node does not
# use (btrfs needs cgo; overlayfs is built in). Tags select files only, so the others' packages are unchanged.
TAGS="selinux notest no_btrfs no_devmapper no_zfs"
# -dwarf=false: the compiler skips the debug info that the linker's -s -w would strip anyway (kube-scheduler from an
# empty build cache: 361 -> 308 s, 606 -> 516 CPU-s; e2e/README.md). It changes no code, so the cache key ignores it.
go_build() {  # go_build LDFLAGS PACKAGE [MODULE_DIR]: one command of the cluster module (or of MODULE_DIR)
    (cd "${3:-$MOD}" && go build -trimpath -tags "$TAGS" -gcflags=all=-dwarf=false -ldflags "$1" -o "$out" "$2")
}
k8s_build() { go_build "$K8S_LDFLAGS" "k8s.io/kubernetes/cmd/$1"; }
etcd_build() { go_build "-s -w" go.etcd.io/etcd/server/v3; }
kwok_build() { go_build "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" sigs.k8s.io/kwok/cmd/kwok; }
coredns_build() { go_build "-s -w" ./coredns; }  # CoreDNS with the kubernetes plugin (gomod/cluster/coredns)
containerd_build() {  # containerd_build CMD: containerd, containerd-shim-runc-v2 or ctr, without cgo
    go_build "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}" \
        "github.com/containerd/containerd/v2/cmd/$1"
}
mpi_build() { go_build "-s -w" github.com/kubeflow/mpi-operator/cmd/mpi-operator; }
kstatus_build() { go_build "-s -w" . "$KSTATUS_MOD"; }  # its own module and graph (cli-utils' k8s.io v0.30)
kueue_build() {  # its own module and graph (k8s.io v0.35, controller-runtime v0.23); version stamped as its Makefile
    local v
    v=$(awk '$1 == "require" && $2 == "sigs.k8s.io/kueue" {print $3; exit}' "$KUEUE_MOD/go.mod")
    go_build "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${v}" sigs.k8s.io/kueue/cmd/kueue "$KUEUE_MOD"
}
versitygw_build() {  # its own module and graph; version stamped as its Makefile (`versitygw --version`)
    local v
    v=$(awk '$1 == "require" && $2 == "github.com/versity/versitygw" {print $3; exit}' "$VGW_MOD/go.mod")
    go_build "-s -w -X main.Version=${v}" github.com/versity/versitygw/cmd/versitygw "$VGW_MOD"
}
registry_build() {  # the registry (version stamped as its Makefile: `registry --version`)
    local v
    v=$(awk '$1 == "github.com/distribution/distribution/v3" && $2 ~ /^v/ {print $2; exit}' "$REG_MOD/go.mod")
    [[ -n "$v" ]] || { echo "e2e/build.sh: no distribution/v3 version in $REG_MOD/go.mod" >&2; return 1; }
    go_build "-s -w -X github.com/distribution/distribution/v3/version.version=${v}" \
        github.com/distribution/distribution/v3/cmd/registry "$REG_MOD"
}
htpasswd_build() { go_build "-s -w" ./htpasswd "$REG_MOD"; }
cm_crds() {  # the CRDs of the cert-manager module gomod/certmanager builds from (go.sum verifies it)
    local dir
    dir=$(cd "$CM_MOD" && go mod download github.com/cert-manager/cert-manager \
        && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
    mkdir -p "$out"
    cp "$dir"/deploy/crds/*.yaml "$out/"
}

# Helm's Makefile stamps its version and the Kubernetes version it assumes for `helm template`/`lint`
# (.Capabilities.KubeVersion); without these it reports v0.0.0 and assumes Kubernetes 1.20.
helm_build() {
    local ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
    ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ld+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${minor}"
    done
    go_build "$ld" helm.sh/helm/v3/cmd/helm
}

if [[ -n "$VGW_ONLY" ]]; then
    build "$VGW" versitygw_build
    touch "$BIN/$VGW"
    # builds of other versions of the module, unused for KESTREL_E2E_KEEP_DAYS days (as the cluster's folders below)
    find "$BIN" -maxdepth 1 -name 'versitygw-*' -mtime "+${KESTREL_E2E_KEEP_DAYS:-14}" -exec rm -f {} +
    echo "$BIN/$VGW"
    exit 0
fi

build etcd etcd_build
build kube-apiserver k8s_build kube-apiserver
build kubectl k8s_build kubectl
build kwok kwok_build
build kube-controller-manager k8s_build kube-controller-manager
build kube-scheduler k8s_build kube-scheduler
# The real node (kubelet and kube-proxy share most packages with the binaries above).
build kubelet k8s_build kubelet
build kube-proxy k8s_build kube-proxy
build coredns coredns_build
for cmd in containerd containerd-shim-runc-v2 ctr; do
    build "$cmd" containerd_build "$cmd"
done
# The MPIJob CRD (also needed by the test double): a plain file, copied whole or not at all.
if [[ ! -f "$BIN/kubeflow.org_mpijobs.yaml" ]]; then
    crd_source=$(mpijob_crd_source)
    cp "$crd_source" "$BIN/.kubeflow.org_mpijobs.yaml.partial"
    mv "$BIN/.kubeflow.org_mpijobs.yaml.partial" "$BIN/kubeflow.org_mpijobs.yaml"
    echo "copied $crd_source" >&2
fi
if [[ "${KESTREL_E2E_SKIP_MPI:-}" != "1" ]]; then
    build mpi-operator mpi_build
fi
build "helm-${HELM_VERSION}" helm_build
ln -sfn "helm-${HELM_VERSION}" "$BIN/helm"
build "$KSTATUS" kstatus_build
ln -sfn "$KSTATUS" "$BIN/kstatus"
if [[ "${KESTREL_E2E_SKIP_KUEUE:-}" != "1" ]]; then
    build "$KUEUE" kueue_build
    ln -sfn "$KUEUE" "$BIN/kueue"
    touch "$BIN/$KUEUE"
fi
build "$CM-crds" cm_crds
build "registry-$REG_HASH" registry_build
ln -sfn "registry-$REG_HASH" "$BIN/registry"
build "htpasswd-$REG_HASH" htpasswd_build
ln -sfn "htpasswd-$REG_HASH" "$BIN/htpasswd"

# Folders of other keys (earlier pins, ~0.5-1 GiB each) are removed once no build has used them for
# KESTREL_E2E_KEEP_DAYS days, the way Go trims its build cache; one whose lock another build.sh holds is kept.
KEEP_DAYS="${KESTREL_E2E_KEEP_DAYS:-14}"
touch "$CACHE_ROOT/$KEY/.used" "$BIN/$KSTATUS" "$BIN/$CM-crds" "$BIN/registry-$REG_HASH" "$BIN/htpasswd-$REG_HASH"
# kstatus and Kueue builds and cert-manager CRD copies of other versions of their modules, by the same rule (this one's
# mtime is the touch above; Kueue's, the touch after its build).
find "$BIN" -maxdepth 1 \( -name 'kstatus-*' -o -name 'kueue-*' -o -name 'cert-manager-*' -o -name 'registry-*' -o -name 'htpasswd-*' \) -mtime "+${KEEP_DAYS}" \
    -exec rm -rf {} +
for old in "$CACHE_ROOT"/k8s-*/; do
    old="${old%/}"
    [[ "$old" != "$CACHE_ROOT/$KEY" ]] || continue
    stamp="$old/.used"
    [[ -e "$stamp" ]] || stamp="$old"  # folders from before the stamp existed: their own mtime
    [[ -n "$(find "$stamp" -maxdepth 0 -mtime "+${KEEP_DAYS}")" ]] || continue
    if (flock -n 8 && rm -rf "$old") 8>>"$old/.lock"; then
        echo "removed $old (unused for over ${KEEP_DAYS} days)" >&2
    fi
done
echo "$BIN"
