#!/usr/bin/env bash
# CI entry for the end-to-end suite, from the repo's own files on a fresh machine (as root):
# 1. Debian packages of the real node (runc, CNI plugins, iptables for kube-proxy);
# 2. the images the real node runs (scripts/build_images.sh: base + trainer + pause, cached by their inputs);
# 3. the cluster binaries (build.sh: cold tens of minutes on 2 cores, cached by their module's hash);
# 4. the suite (it creates its own network namespace, see e2e/netns.py). Extra arguments go to pytest;
# `--prepare` alone does steps 1-3 only (.ci/run builds them in the background while the unit suite runs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KESTREL_VENV:-$(pwd)/.venv}
# Strict by default (tests/strict_mode.py): this script builds every part, so a skipped test or the MPIJob test
# double fails the run; KESTREL_STRICT=0 allows them.
export KESTREL_STRICT=${KESTREL_STRICT:-1}
start=$(date +%s)
need=()
for pkg in runc containernetworking-plugins iptables iproute2 util-linux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "e2e: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The CPU images (podman; cached by their inputs, seconds when warm) and their OCI archives for the node. Before
# the binaries: they need neither, and .ci/run has a build.sh running already, which the one below waits for.
export KESTREL_IMAGE_ARCHIVES=${KESTREL_IMAGE_ARCHIVES:-$HOME/.cache/kestrel-images/archives}
bash scripts/build_images.sh --save "$KESTREL_IMAGE_ARCHIVES"
echo "e2e: images ready after $(( $(date +%s) - start )) s"
bash e2e/build.sh
echo "e2e: binaries ready after $(( $(date +%s) - start )) s"
if [[ "${1:-}" == "--prepare" ]]; then
    exit 0
fi
# With arguments (-k, a file): one session. The whole suite: two sessions side by side, each with its own cluster in
# its own network namespace (netns.py), because most of the suite waits on pods: the multi-node, Kueue and S3 modules
# (their own nodes and controllers, about a third of the time) in one, the rest in the other. Logs shown when done.
# Test files or node ids among the arguments run alone; otherwise the arguments (-k ...) select from the whole suite.
if [ $# -gt 0 ]; then
    where=(e2e)
    for arg in "$@"; do [[ "$arg" == e2e/* ]] && where=(); done
    KESTREL_E2E_BUILD=1 "$VENV/bin/python" -m pytest "${where[@]}" -q "$@"
    echo "e2e: total $(( $(date +%s) - start )) s"
    exit 0
fi
SIDE=(e2e/test_multinode.py e2e/test_kueue.py e2e/test_real_s3.py)
side_log=$(mktemp)
KESTREL_E2E_BUILD=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${SIDE[@]}" >"$side_log" 2>&1 &
side=$!
trap 'kill "$side" 2>/dev/null || true' EXIT
main_rc=0
KESTREL_E2E_BUILD=1 "$VENV/bin/python" -m pytest e2e -q -p no:cacheprovider "${SIDE[@]/#/--ignore=}" || main_rc=$?
echo "e2e: main session done after $(( $(date +%s) - start )) s"
side_rc=0
wait "$side" || side_rc=$?
trap - EXIT
echo "e2e: side session (${SIDE[*]}):"
cat "$side_log"
rm -f "$side_log"
echo "e2e: total $(( $(date +%s) - start )) s"
if [ "$main_rc" -ne 0 ] || [ "$side_rc" -ne 0 ]; then
    echo "e2e: failed (main session exit $main_rc, side session exit $side_rc)" >&2
    exit 1
fi
