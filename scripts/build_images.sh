#!/usr/bin/env bash
# Build Kestrel's container images with podman, from the repo's own files and Debian's apt/PyPI only (no
# registry is needed): a Debian bookworm base root fs from debootstrap, then the images on top of it.
#
# Interface (stable: e2e/ and the real-node tests rely on it)
#   scripts/build_images.sh [--save DIR] [--gpu] [--only NAMES] [--print-env] [--push REGISTRY]
#   Images, VERSION = project.version in pyproject.toml:
#     localhost/kestrel-trainer:VERSION      CPU trainer: TF 2.15.1 CPU, Horovod 0.28.1 (MPI + Gloo), sshd, uid 1000
#     localhost/kestrel-operator:VERSION     the operator (kopf), uid 1000
#     localhost/kestrel-pause:VERSION        CRI sandbox image: PID 1 sleeps, exits 0 on SIGTERM
#     localhost/kestrel-trainer-gpu:VERSION  only with --gpu (several GB; never in CI): tensorflow[and-cuda]
#     localhost/kestrel-base:bookworm-HASH   the debootstrap base all of them start FROM
#   --save DIR    also write DIR/kestrel-{trainer,operator,pause[,trainer-gpu]}.tar (OCI archives, for
#                 `ctr -n k8s.io images import FILE`); an archive is rewritten only when its image changed
#   --gpu         also build kestrel-trainer-gpu
#   --only NAMES  build only these comma-separated names (trainer,operator,pause,trainer-gpu; base always)
#   --print-env   print the environment podman needs on this machine (CONTAINERS_CONF=...) and exit
#   --push REGISTRY  after building, push each image built here to REGISTRY (HOST[:PORT][/PATH], e.g.
#                 10.250.0.2:5000/kestrel) as REGISTRY/kestrel-NAME:VERSION-COMMIT (COMMIT: 7 hex of the checkout's
#                 HEAD) and REGISTRY/kestrel-NAME:VERSION, then `helm package charts/kestrel` (chart version and
#                 appVersion must equal VERSION) and `helm push` it to oci://REGISTRY/charts. stdout gets
#                 "pushed REF DIGEST" per tag and "chart oci://REGISTRY/charts/kestrel VERSION DIGEST".
#                 Credentials never on a command line: KESTREL_REGISTRY_USER + KESTREL_REGISTRY_PASSWORD from the
#                 environment (logged in into a temporary auth file, removed at exit), else the auth file of an
#                 earlier `podman login` (REGISTRY_AUTH_FILE, else podman's default), which helm reads too.
#                 KESTREL_REGISTRY_CA: a CA file the registry's certificate is checked against (otherwise the
#                 system's); KESTREL_HELM: the helm binary (default: helm on PATH).
#   stdout: one line per image, "image REF ID", each followed with --save by "archive PATH" (logs go to stderr)
#   Each image is cached by a hash of its inputs (Dockerfile, the files it copies, constraints, the base,
#   the Horovod wheel), kept in its label kestrel.inputs: a warm run rebuilds nothing unchanged.
#   Env: KESTREL_IMAGE_CACHE (default ~/.cache/kestrel-images): containers.conf and scratch space.
#        CONTAINERS_CONF: used when set; otherwise this script's containers.conf (the settings these machines
#        need: no default ulimits, runc, cgroupfs). Podman commands run by hand need the same (--print-env).
#        KESTREL_DEBIAN_MIRROR: debootstrap mirror (default: the first URIs: of /etc/apt/sources.list.d).
#        PIP_CERT or SSL_CERT_FILE: a CA bundle pip inside the builds must trust (a TLS-intercepting proxy)
#        KESTREL_WHEEL_CACHE: where scripts/build_horovod.sh caches the Horovod wheel (the CPU trainer
#        reuses it; it is built into the shared venv first when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SAVE_DIR=""
GPU=0
ONLY=""
PRINT_ENV=0
PUSH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --save) SAVE_DIR=${2:?--save needs a folder}; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --only) ONLY=${2:?--only needs names}; shift 2 ;;
    --print-env) PRINT_ENV=1; shift ;;
    --push) PUSH=${2:?--push needs a registry (HOST[:PORT][/PATH])}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_images: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

for name in ${ONLY//,/ }; do
  case "$name" in trainer|operator|pause|trainer-gpu) ;; *) echo "build_images: unknown image '$name' in --only" \
    "(trainer, operator, pause, trainer-gpu)" >&2; exit 2 ;; esac
done

die() { echo "build_images: $*" >&2; exit 2; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
[ -n "$VERSION" ] || { die "no version in pyproject.toml"; }

# --push: everything it needs is checked before any build, each failure one line naming what is wrong.
if [ -n "$PUSH" ]; then
  PUSH=${PUSH%/}
  [[ "$PUSH" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] || {
    die "--push: '$PUSH' is not HOST[:PORT][/PATH] (lower-case path)"; }
  COMMIT=$(git -C "$REPO" rev-parse --short=7 HEAD 2>/dev/null) || {
    die "--push: $REPO is not a git checkout (the tag is VERSION-COMMIT)"; }
  HELM=${KESTREL_HELM:-$(command -v helm || true)}
  [ -n "$HELM" ] && [ -x "$HELM" ] || { die "--push: no helm binary (KESTREL_HELM or helm on PATH)"; }
  for field in version appVersion; do
    chart_v=$(sed -n "s/^$field: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" charts/kestrel/Chart.yaml)
    [ "$chart_v" = "$VERSION" ] || {
      die "--push: charts/kestrel/Chart.yaml $field is '$chart_v', pyproject.toml's version is '$VERSION'"; }
  done
  if [ -n "${KESTREL_REGISTRY_CA:-}" ] && [ ! -f "$KESTREL_REGISTRY_CA" ]; then
    die "--push: KESTREL_REGISTRY_CA=$KESTREL_REGISTRY_CA is not a file"
  fi
  if { [ -n "${KESTREL_REGISTRY_USER:-}" ] && [ -z "${KESTREL_REGISTRY_PASSWORD:-}" ]; } \
      || { [ -z "${KESTREL_REGISTRY_USER:-}" ] && [ -n "${KESTREL_REGISTRY_PASSWORD:-}" ]; }; then
    die "--push: set both KESTREL_REGISTRY_USER and KESTREL_REGISTRY_PASSWORD, or neither (podman login)"
  fi
fi
CACHE=${KESTREL_IMAGE_CACHE:-$HOME/.cache/kestrel-images}
mkdir -p "$CACHE"
if [ -z "${CONTAINERS_CONF:-}" ]; then
  # Podman's defaults fail in this sandbox (docs/images.md): its default ulimits exceed the hard limits,
  # crun cannot run with hybrid cgroups, and there is no systemd.
  export CONTAINERS_CONF="$CACHE/containers.conf"
  conf=$'[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
  [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" = "${conf%$'\n'}" ] || printf '%s' "$conf" > "$CONTAINERS_CONF"
fi
if [ "$PRINT_ENV" = 1 ]; then
  echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  exit 0
fi

log() { echo "build_images: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
since() { echo "$(( $(date +%s) - $1 )) s"; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

missing=()
for pkg in podman debootstrap runc; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

start_all=$(date +%s)
built_lines=()

image_label() {  # image_label REF: the kestrel.inputs label, empty when the image is absent
  podman image inspect --format '{{index .Labels "kestrel.inputs"}}' "$1" 2>/dev/null || true
}

hash_files() {  # hash_files PATH...: one hash over the files' names and contents (no caches)
  find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16
}

# --- base: debootstrap root fs imported into podman ------------------------------------------------------
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv  # what python:3.11-slim-bookworm gives the Dockerfiles: python3 -m venv
MIRROR=${KESTREL_DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null \
  || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE_RECIPE="v1 debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE $MIRROR"
BASE_HASH=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)
BASE_REF="localhost/kestrel-base:$BASE_SUITE-$BASE_HASH"
if [ -n "$(image_label "$BASE_REF")" ]; then
  log "base $BASE_REF is cached"
else
  t=$(date +%s)
  log "base: $BASE_RECIPE"
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'as_root rm -rf "$rootfs"' EXIT
  as_root nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$rootfs" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . | podman import --change "LABEL kestrel.inputs=$BASE_HASH" \
    --change 'CMD ["/bin/bash"]' - "$BASE_REF" >/dev/null
  as_root rm -rf "$rootfs"
  trap - EXIT
  log "base $BASE_REF built in $(since "$t")"
fi
BASE_ID=$(podman image inspect --format '{{.Id}}' "$BASE_REF")

# --- the images --------------------------------------------------------------------------------------------
horovod_wheel() {  # the cached Horovod wheel for the CPU trainer; built (into the shared venv) when missing
  local slot="${KESTREL_WHEEL_CACHE:-$HOME/.cache/kestrel-wheels}/horovod-0.28.1-tf2.15.1-cp311"
  local whl
  whl=$(ls "$slot"/horovod-0.28.1-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    log "no cached Horovod wheel in $slot: building it (scripts/build_horovod.sh)"
    bash scripts/build_horovod.sh >&2
    whl=$(ls "$slot"/horovod-0.28.1-*.whl | head -n1)
  fi
  echo "$whl"
}

# Behind a TLS-intercepting proxy (this sandbox), pip in the build must trust the host's CA bundle: mount it
# with a pip.conf naming it into the RUN steps only (never into a layer).
BUILD_ARGS=()
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}"; do
  if [ -n "$ca" ] && [ -f "$ca" ]; then
    mkdir -p "$CACHE/build-pip"
    cp "$ca" "$CACHE/build-pip/ca.crt"
    printf '[global]\ncert = /run/kestrel-build/ca.crt\n' > "$CACHE/build-pip/pip.conf"
    BUILD_ARGS=(-v "$CACHE/build-pip:/run/kestrel-build:ro" --build-arg PIP_CONFIG_FILE=/run/kestrel-build/pip.conf)
    break
  fi
done

# build NAME DOCKERFILE [PATH...]: copy the Dockerfile and the repo paths it copies (plus $WHEEL, when set, into
# trainer_image/wheels/) into a scratch context, hash that, and build unless the image has that hash.
build() {
  local name=$1 dockerfile=$2
  shift 2
  local ref="localhost/$name:$VERSION" ctx inputs t path
  ctx=$(mktemp -d "$CACHE/context.XXXXXX")
  for path in "$dockerfile" "$@"; do
    mkdir -p "$ctx/$(dirname "$path")"
    cp -r "$path" "$ctx/$path"
  done
  if [ -n "${WHEEL:-}" ]; then
    mkdir -p "$ctx/trainer_image/wheels"
    cp "$WHEEL" "$ctx/trainer_image/wheels/"
  fi
  find "$ctx" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  local extra=(${EXTRA_BUILD_ARGS:-})
  inputs="$( (cd "$ctx" && hash_files . && echo "${extra[*]}") | sha256sum | cut -c1-16)-${BASE_ID:0:12}"
  if [ "$(image_label "$ref")" = "$inputs" ]; then
    log "$ref is up to date (inputs $inputs)"
  else
    t=$(date +%s)
    log "building $ref from $dockerfile (inputs $inputs)"
    if ! nice -n 10 podman build --network host --layers -f "$ctx/$dockerfile" --build-arg "BASE=$BASE_REF" \
        "${BUILD_ARGS[@]}" "${extra[@]}" --label "kestrel.inputs=$inputs" -t "$ref" "$ctx" >&2; then
      rm -rf "$ctx"
      log "building $ref failed (podman's output above)"
      exit 1
    fi
    log "built $ref in $(since "$t")"
  fi
  rm -rf "$ctx"
  built_lines+=("image $ref $(podman image inspect --format '{{.Id}}' "$ref")")
  if [ -n "$SAVE_DIR" ]; then
    save "$name" "$ref"
  fi
}

save() {  # save NAME REF: DIR/NAME.tar as an OCI archive, rewritten only when the image changed
  local name=$1 ref=$2 id archive
  mkdir -p "$SAVE_DIR"
  archive="$(cd "$SAVE_DIR" && pwd)/$name.tar"
  id=$(podman image inspect --format '{{.Id}}' "$ref")
  if [ ! -f "$archive" ] || [ "$(cat "$archive.id" 2>/dev/null)" != "$id" ]; then
    rm -f "$archive" "$archive.id"
    podman save -q --format oci-archive -o "$archive.tmp" "$ref" >&2 && mv "$archive.tmp" "$archive"
    echo "$id" > "$archive.id"
    log "saved $ref to $archive"
  fi
  built_lines+=("archive $archive")
}

SOURCES=(pyproject.toml constraints.txt README.md trainer_image/kestrel_trainer operator/kestrel_operator)
wanted pause && build kestrel-pause e2e/images/pause.Dockerfile
wanted operator && build kestrel-operator operator/Dockerfile "${SOURCES[@]}" trainer_image/image/requirements.py
wanted trainer && WHEEL=$(horovod_wheel) build kestrel-trainer trainer_image/Dockerfile "${SOURCES[@]}" \
  trainer_image/image trainer_image/wheels
if [ "$GPU" = 1 ] || { [ -n "$ONLY" ] && wanted trainer-gpu; }; then
  # No CUDA toolkit (nvcc) is reachable here and the PyPI CUDA wheels carry none, so Horovod cannot be built
  # with NCCL on this base: the GPU image gets the CPU image's Horovod wheel (Dockerfile.gpu's header).
  log "kestrel-trainer-gpu: HOROVOD_NCCL=off (the base has no CUDA compiler; see trainer_image/Dockerfile.gpu)"
  WHEEL=$(horovod_wheel) EXTRA_BUILD_ARGS="--build-arg HOROVOD_NCCL=off" build kestrel-trainer-gpu \
    trainer_image/Dockerfile.gpu "${SOURCES[@]}" trainer_image/image trainer_image/wheels
fi

# --- push ---------------------------------------------------------------------------------------------------
push_all() {
  local t reg_host tls_podman=() tls_helm=() auth ref id tag digest pkg
  t=$(date +%s)
  reg_host=${PUSH%%/*}
  if [ -n "${KESTREL_REGISTRY_CA:-}" ]; then
    PUSH_TMP_CERTS=$(mktemp -d)
    cp "$KESTREL_REGISTRY_CA" "$PUSH_TMP_CERTS/ca.crt"
    tls_podman=(--cert-dir "$PUSH_TMP_CERTS")
    tls_helm=(--ca-file "$KESTREL_REGISTRY_CA")
  fi
  if [ -n "${KESTREL_REGISTRY_USER:-}" ]; then
    PUSH_TMP_AUTH=$(mktemp)  # 0600: mktemp's mode
    echo '{}' > "$PUSH_TMP_AUTH"
    auth=$PUSH_TMP_AUTH
    printf '%s\n' "$KESTREL_REGISTRY_PASSWORD" | podman login --authfile "$auth" "${tls_podman[@]}" \
      --username "$KESTREL_REGISTRY_USER" --password-stdin "$reg_host" >&2 \
      || { log "--push: podman login to $reg_host as $KESTREL_REGISTRY_USER failed"; return 1; }
  else
    # podman login's default: $XDG_RUNTIME_DIR/containers/auth.json, else /run/containers/UID/auth.json
    if [ -n "${XDG_RUNTIME_DIR:-}" ]; then auth=$XDG_RUNTIME_DIR/containers/auth.json
    else auth=/run/containers/$(id -u)/auth.json; fi
    auth=${REGISTRY_AUTH_FILE:-$auth}
    [ -f "$auth" ] || { log "--push: no credentials: set KESTREL_REGISTRY_USER/_PASSWORD or podman login $reg_host" \
      "(auth file $auth is missing)"; return 1; }
  fi
  for line in "${built_lines[@]}"; do
    [[ "$line" == image* ]] || continue
    ref=$(echo "$line" | cut -d' ' -f2)
    id=$(echo "$line" | cut -d' ' -f3)
    name=${ref#localhost/}; name=${name%%:*}
    for tag in "$VERSION-$COMMIT" "$VERSION"; do
      # By the ID this run built or checked, not by the local tag: on a machine shared with other checkouts the
      # tag localhost/NAME:VERSION may point at another checkout's build by now.
      podman tag "$id" "$PUSH/$name:$tag"
      digest=$(mktemp)
      podman push -q --authfile "$auth" "${tls_podman[@]}" --digestfile "$digest" "$PUSH/$name:$tag" >&2 \
        || { rm -f "$digest"; log "--push: pushing $PUSH/$name:$tag failed (podman's output above)"; return 1; }
      pushed_lines+=("pushed $PUSH/$name:$tag $(cat "$digest")")
      rm -f "$digest"
      log "pushed $PUSH/$name:$tag"
    done
  done
  pkg=$(mktemp -d)
  "$HELM" package charts/kestrel --destination "$pkg" >&2
  out=$("$HELM" push "$pkg/kestrel-$VERSION.tgz" "oci://$PUSH/charts" --registry-config "$auth" "${tls_helm[@]}" 2>&1) \
    || { rm -rf "$pkg"; log "--push: helm push to oci://$PUSH/charts failed: $out"; return 1; }
  rm -rf "$pkg"
  digest=$(echo "$out" | sed -n 's/^Digest: *//p')
  pushed_lines+=("chart oci://$PUSH/charts/kestrel $VERSION $digest")
  log "pushed chart oci://$PUSH/charts/kestrel:$VERSION in $(since "$t") (images and chart)"
}
pushed_lines=()
if [ -n "$PUSH" ]; then
  PUSH_TMP_AUTH=""; PUSH_TMP_CERTS=""
  trap 'rm -rf "$PUSH_TMP_AUTH" "$PUSH_TMP_CERTS"' EXIT
  push_all || exit 1
fi

log "done in $(since "$start_all")"
printf '%s\n' "${built_lines[@]}"
[ ${#pushed_lines[@]} -eq 0 ] || printf '%s\n' "${pushed_lines[@]}"
