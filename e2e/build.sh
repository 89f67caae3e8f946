#!/usr/bin/env bash
# Builds, once, the binaries of the local Kubernetes cluster that the e2e suite runs: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, the Kubeflow MPI Operator, helm, and
# for the real node kubelet, kube-proxy, CoreDNS and containerd v2 (daemon, runc shim, ctr; runc and the
# CNI plugins come from Debian: e2e/run.sh installs them). Nothing can be downloaded but Go modules and Debian packages, so
# each is compiled from its Go module at a pinned version. Output goes to a cache folder OUTSIDE the repo,
# keyed by the versions, and a binary already there is reused (a cold build takes tens of minutes on
# 2 cores; see e2e/README.md for the measured figures).
#
# The MPIJob CRD the suite installs is the MPI Operator's own, from the same Go module as its binary
# (manifests/base/kubeflow.org_mpijobs.yaml), copied next to the binaries as kubeflow.org_mpijobs.yaml.
#
# Usage: e2e/build.sh              build what is missing, print the bin folder on the last line
#        e2e/build.sh --print      only print the bin folder (for the pytest fixture)
#        e2e/build.sh --mpijob-crd print the path of the MPIJob CRD in the MPI Operator's Go module (downloaded
#                                  into the module cache if needed; the unit tests compare their copy with it)
# Env:   KESTREL_E2E_CACHE       cache root (default $HOME/.cache/kestrel-e2e)
#        KESTREL_E2E_JOBS        go build -p (default 2)
#        KESTREL_E2E_SKIP_MPI=1  do not build the MPI Operator (the suite then uses its test double)
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
MPI_OPERATOR_VERSION=v0.8.0
# helm v3.21 is built against k8s.io/client-go v0.36 (the same minor as K8S_VERSION). Not part of KEY (a new
# helm must not rebuild the control plane): the binary's own name carries the version, `helm` links to it.
HELM_VERSION=v3.21.4

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KESTREL_E2E_CACHE:-$HOME/.cache/kestrel-e2e}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_mpi-${MPI_OPERATOR_VERSION}"
BIN="$CACHE_ROOT/$KEY/bin"

if [[ "${1:-}" == "--print" ]]; then
    echo "$BIN"
    exit 0
fi

if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "e2e/build.sh: the go command is needed (Go >= 1.26)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# mpijob_crd_source: the CRD file inside the MPI Operator module that gomod/mpi-operator/go.mod pins (go.sum
# verifies the module's content), after checking that it is the version this script builds.
mpijob_crd_source() {
    local mod=github.com/kubeflow/mpi-operator version dir
    (cd "$HERE/gomod/mpi-operator" && go mod download "$mod") >&2
    version=$(cd "$HERE/gomod/mpi-operator" && go list -m -f '{{.Version}}' "$mod")
    if [[ "$version" != "$MPI_OPERATOR_VERSION" ]]; then
        echo "e2e/build.sh: gomod/mpi-operator/go.mod pins $mod $version, this script builds $MPI_OPERATOR_VERSION" >&2
        return 1
    fi
    dir=$(cd "$HERE/gomod/mpi-operator" && go list -m -f '{{.Dir}}' "$mod")
    [[ -f "$dir/manifests/base/kubeflow.org_mpijobs.yaml" ]] || {
        echo "e2e/build.sh: no manifests/base/kubeflow.org_mpijobs.yaml in $dir" >&2; return 1; }
    echo "$dir/manifests/base/kubeflow.org_mpijobs.yaml"
}
if [[ "${1:-}" == "--mpijob-crd" ]]; then
    mpijob_crd_source
    exit 0
fi

mkdir -p "$BIN"
# The machine is shared: every compile runs at the lowest CPU priority (children inherit it).
renice -n 19 $$ >/dev/null
TIMES="$CACHE_ROOT/$KEY/build-times.tsv"
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

k8s_build() {  # k8s_build NAME: one command of k8s.io/kubernetes through our wrapper module
    (cd "$HERE/gomod/k8s" && go build -trimpath -tags selinux,notest -ldflags "$K8S_LDFLAGS" \
        -o "$out" "k8s.io/kubernetes/cmd/$1")
}
etcd_build() {
    (cd "$HERE/gomod/etcd" && go build -trimpath -ldflags "-s -w" -o "$out" go.etcd.io/etcd/server/v3)
}
kwok_build() {
    local gobin
    gobin="$(mktemp -d)"
    GOBIN="$gobin" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" \
        "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
    mv "$gobin/kwok" "$out" && rmdir "$gobin"
}
coredns_build() {  # gomod/coredns/main.go: CoreDNS with the kubernetes plugin (version pinned in its go.mod)
    (cd "$HERE/gomod/coredns" && go build -trimpath -ldflags "-s -w" -o "$out" .)
}
CONTAINERD_VERSION=v2.3.7  # also pinned in gomod/containerd/go.mod
containerd_build() {  # containerd_build CMD: containerd, containerd-shim-runc-v2 or ctr, without cgo
    # no_btrfs/no_devmapper/no_zfs: snapshotters this node does not use (btrfs needs cgo); overlayfs is built in.
    (cd "$HERE/gomod/containerd" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}" \
        -o "$out" "github.com/containerd/containerd/v2/cmd/$1")
}
mpi_build() {
    (cd "$HERE/gomod/mpi-operator" && go build -trimpath -ldflags "-s -w" -o "$out" \
        github.com/kubeflow/mpi-operator/cmd/mpi-operator)
}

# Helm's Makefile stamps its version and the Kubernetes version it assumes for `helm template`/`lint`
# (.Capabilities.KubeVersion); without these it reports v0.0.0 and assumes Kubernetes 1.20.
helm_build() {
    local gobin ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
    ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ld+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${minor}"
    done
    gobin="$(mktemp -d)"
    GOBIN="$gobin" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
    mv "$gobin/helm" "$out" && rmdir "$gobin"
}

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
echo "$BIN"
