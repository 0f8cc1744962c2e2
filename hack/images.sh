#!/usr/bin/env bash
# Container images for the local one-node cluster, built with buildah (no Docker, no registry).
#
#   hack/images.sh system   the node's own images (hack/cluster.py imports them at cluster-up):
#                           kubeclip.local/pause:dev (static C, hack/node/pause.c), coredns, local-path-provisioner
#                           (static Go binaries from hack/tools.sh node) and busybox (Debian busybox-static,
#                           local-path-provisioner's helper pods), each a single binary in a scratch image
#   hack/images.sh monitoring  `make monitoring-up`: kubeclip.local/prometheus-operator:dev and
#                           kubeclip.local/prometheus-config-reloader:dev (static Go binaries from
#                           hack/tools.sh monitoring) and kubeclip.local/prometheus:v3.5.0 (static Go build
#                           of github.com/prometheus/prometheus), each in a scratch image, imported into the node
#   hack/images.sh kueue    `make kueue-up`: kubeclip.local/kueue:dev (static Go build of sigs.k8s.io/kueue
#                           cmd/kueue v0.17.0 from hack/tools.sh kueue) in a scratch image, imported into the node
#   hack/images.sh app      `make images`: both targets of ./Dockerfile, unmodified, on local bases of the
#                           same shape as the official ones (which cannot be pulled here):
#                             kubeclip.local/python:3.11-bookworm  debootstrap bookworm + python3.11 (PYTHON_IMAGE)
#                             kubeclip.local/torch:2.14.1          the same + a venv with torch 2.14.1 from PyPI (TORCH_IMAGE)
#                           -> kubeclip-controller:dev, kubeclip-trainer:dev (and the python base, which
#                              examples/dataset-pvc.yaml's loader can use), imported into the running node
#
# Every image is kept as a docker-archive in $KUBECLIP_TOOLS/images/NAME.tar with a stamp: the hash of
# its inputs (its recipe string below, the files it copies, its base's hash); change a recipe string
# when you change how an image is made. A second run with unchanged inputs only compares
# hashes; a node is only re-imported an archive whose hash it has not imported yet.
# Builds see the machine's CA bundle and /etc/pip.conf read-only (this machine re-signs outbound TLS);
# they are mounted at build time only and never end up in an image.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${KUBECLIP_TOOLS:-$REPO/.tools}
BIN=$TOOLS/bin
IMAGES=$TOOLS/images
CLUSTER_DIR=${KUBECLIP_CLUSTER_DIR:-$REPO/.cluster}
CTR_SOCK=${KUBECLIP_CONTAINERD_SOCK:-/run/kubeclip/containerd.sock}
TORCH_VERSION=2.14.1
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$IMAGES"
exec 8>"$IMAGES/.lock"
flock 8

log() { echo "images: $*" >&2; }
bah() { buildah --root "$TOOLS/buildah/storage" --runroot /run/kubeclip-buildah --storage-driver overlay "$@"; }
hash_of() {  # files are hashed by content, directories by a reproducible tar of their tree
  local p
  for p in "$@"; do
    if [[ -d "$p" ]]; then tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$p" -cf - .; else cat "$p"; fi
  done | sha256sum | cut -c1-16
}
PYTHON_RECIPE="debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm; python->python3; LANG=C.UTF-8"
TORCH_RECIPE="python -m venv /opt/torch; pip install --no-index torch==$TORCH_VERSION; PATH=/opt/torch/bin:..."
build_mounts=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
[[ -f /etc/pip.conf ]] && build_mounts+=(--volume /etc/pip.conf:/etc/pip.conf:ro)

# fresh NAME KEY: true when $IMAGES/NAME.tar was made from KEY.
fresh() { [[ -f "$IMAGES/$1.tar" && -f "$IMAGES/$1.key" && "$(cat "$IMAGES/$1.key")" == "$2" ]]; }
# save NAME REF KEY: buildah image REF -> $IMAGES/NAME.tar (a docker-archive naming REF), stamped KEY.
save() {
  rm -f "$IMAGES/$1.tar" "$IMAGES/$1.key"
  bah push -q "$2" "docker-archive:$IMAGES/$1.tar.tmp:$2" >/dev/null
  mv -f "$IMAGES/$1.tar.tmp" "$IMAGES/$1.tar"
  echo "$3" > "$IMAGES/$1.key"
}

# scratch_image NAME REF ENTRYPOINT_JSON FILE:DEST... -> one-layer image of static files.
scratch_image() {
  local name=$1 ref=$2 entry=$3; shift 3
  local key srcs=() dests=()
  for pair in "$@"; do srcs+=("${pair%%:*}"); dests+=("${pair#*:}"); done
  key=$(echo "scratch $ref $entry ${dests[*]} $(hash_of "${srcs[@]}")" | sha256sum | cut -c1-16)
  fresh "$name" "$key" && return 0
  local t0=$SECONDS c
  c=$(bah from scratch)
  for pair in "$@"; do bah copy -q "$c" "${pair%%:*}" "${pair#*:}" >/dev/null; done
  bah config --entrypoint "$entry" --cmd '' "$c"
  bah commit -q --rm "$c" "$ref" >/dev/null
  save "$name" "$ref" "$key"
  log "$ref built in $((SECONDS - t0))s"
}

system_images() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  gcc -static -Os -Wall -o "$work/pause" "$REPO/hack/node/pause.c"
  scratch_image pause kubeclip.local/pause:dev '["/pause"]' "$work/pause:/pause"
  scratch_image coredns kubeclip.local/coredns:dev '["/coredns"]' "$BIN/coredns:/coredns"
  scratch_image local-path-provisioner kubeclip.local/local-path-provisioner:dev \
    '["/local-path-provisioner"]' "$BIN/local-path-provisioner:/local-path-provisioner"
  # busybox with the applet links the helper pods' `sh` scripts use
  mkdir -p "$work/bb/bin"
  cp /bin/busybox "$work/bb/bin/busybox"
  for a in sh mkdir rm ls cat chmod; do ln -sf busybox "$work/bb/bin/$a"; done
  scratch_image busybox kubeclip.local/busybox:dev '["/bin/sh"]' "$work/bb/bin:/bin"
  echo "$IMAGES/pause.tar $IMAGES/coredns.tar $IMAGES/local-path-provisioner.tar $IMAGES/busybox.tar"
}

monitoring_images() {
  scratch_image prometheus kubeclip.local/prometheus:v3.5.0 '["/bin/prometheus"]' "$BIN/prometheus:/bin/prometheus"
  scratch_image prometheus-operator kubeclip.local/prometheus-operator:dev '["/bin/operator"]' \
    "$BIN/prometheus-operator:/bin/operator"
  scratch_image prometheus-config-reloader kubeclip.local/prometheus-config-reloader:dev \
    '["/bin/prometheus-config-reloader"]' "$BIN/prometheus-config-reloader:/bin/prometheus-config-reloader"
  import_into_node prometheus prometheus-operator prometheus-config-reloader
}

kueue_images() {
  scratch_image kueue kubeclip.local/kueue:dev '["/manager"]' "$BIN/kueue:/manager"
  import_into_node kueue
}

# --- app images ---------------------------------------------------------------------------------
python_base() {  # -> kubeclip.local/python:3.11-bookworm (the shape of python:3.11-slim-bookworm)
  local key
  key=$(echo "$PYTHON_RECIPE $DEBIAN_MIRROR" | sha256sum | cut -c1-16)
  PYTHON_KEY=$key
  fresh python "$key" && return 0
  local t0=$SECONDS rootfs=$TOOLS/rootfs/bookworm c
  if [[ ! -f "$rootfs.key" || "$(cat "$rootfs.key")" != "$key" ]]; then
    rm -rf "$rootfs" "$rootfs.key"
    log "debootstrap bookworm (minbase + python3.11) into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$rootfs" "$DEBIAN_MIRROR" \
      >"$TOOLS/debootstrap.log" 2>&1 || { tail -20 "$TOOLS/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    ln -sf python3 "$rootfs/usr/bin/python"
    echo "$key" > "$rootfs.key"
  fi
  c=$(bah from scratch)
  bah copy -q "$c" "$rootfs" / >/dev/null
  bah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["python3"]' "$c"
  bah commit -q --rm "$c" kubeclip.local/python:3.11-bookworm >/dev/null
  save python kubeclip.local/python:3.11-bookworm "$key"
  log "kubeclip.local/python:3.11-bookworm built in $((SECONDS - t0))s"
}

torch_base() {  # -> kubeclip.local/torch:2.14.1 (the shape of pytorch/pytorch: root's python/pip hold torch)
  local key wheels=$TOOLS/wheels/torch-$TORCH_VERSION
  key=$(echo "$TORCH_RECIPE $PYTHON_KEY" | sha256sum | cut -c1-16)
  TORCH_KEY=$key
  # no archive: nothing imports the base itself, and it is 5.5 GB; buildah's storage keeps it
  [[ -f "$IMAGES/torch.key" && "$(cat "$IMAGES/torch.key")" == "$key" ]] \
    && bah inspect --type image "kubeclip.local/torch:$TORCH_VERSION" >/dev/null 2>&1 && return 0
  local t0=$SECONDS c
  if [[ ! -f "$wheels/.complete" ]]; then
    log "downloading torch==$TORCH_VERSION and its wheels from PyPI into $wheels"
    rm -rf "$wheels"; mkdir -p "$wheels"
    local py=${KUBECLIP_PYTHON:-python3}
    "$py" -m pip download -q --dest "$wheels" "torch==$TORCH_VERSION"
    touch "$wheels/.complete"
  fi
  c=$(bah from --pull=never kubeclip.local/python:3.11-bookworm)
  bah run --network none --volume "$wheels:/wheels:ro" "$c" -- sh -c \
    "python -m venv /opt/torch && /opt/torch/bin/pip install -q --no-cache-dir --no-index --find-links /wheels torch==$TORCH_VERSION"
  bah config --env PATH=/opt/torch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
  bah commit -q --rm "$c" "kubeclip.local/torch:$TORCH_VERSION" >/dev/null
  echo "$key" > "$IMAGES/torch.key"
  log "kubeclip.local/torch:$TORCH_VERSION built in $((SECONDS - t0))s"
}

# target NAME TARGET PACKAGE BASE_KEY BUILD_ARG...: one target of ./Dockerfile -> docker.io/library/NAME:dev
target() {
  local name=$1 tgt=$2 pkg=$3 base_key=$4; shift 4
  local key ref=docker.io/library/$name:dev
  # inputs: what this target's COPY lines take (tracked files only; the controller's image has no
  # trainer/, the trainer's no controller/) + the Dockerfile + the base
  local inputs=(Dockerfile .dockerignore pyproject.toml README.md kubeclip "$pkg")
  key=$(cd "$REPO" && { echo "$base_key $*"; git ls-files -s "${inputs[@]}"; git diff HEAD -- "${inputs[@]}"; } | sha256sum | cut -c1-16)
  fresh "$name" "$key" && return 0
  local t0=$SECONDS
  (cd "$REPO" && bah bud -q --pull=never --network host --layers=false "${build_mounts[@]}" \
      --target "$tgt" "$@" -t "$ref" -f Dockerfile . ) >"$TOOLS/build-$name.log" 2>&1 \
    || { tail -30 "$TOOLS/build-$name.log" >&2; log "build of $name failed (log: $TOOLS/build-$name.log)"; exit 1; }
  save "$name" "$ref" "$key"
  log "$name:dev built in $((SECONDS - t0))s"
}

# import_into_node NAME...: ctr import of each archive the running node has not imported yet.
import_into_node() {
  if [[ ! -S "$CTR_SOCK" ]]; then
    log "no node running ($CTR_SOCK): images built, not imported; \`make cluster-up\` then \`make images\` again"
    return 0
  fi
  local name
  for name in "$@"; do
    local mark=$CLUSTER_DIR/imported/$name
    [[ -f "$mark" && "$(cat "$mark")" == "$(cat "$IMAGES/$name.key")" ]] && continue
    local t0=$SECONDS
    ctr --address "$CTR_SOCK" -n k8s.io images import "$IMAGES/$name.tar" >/dev/null
    mkdir -p "$CLUSTER_DIR/imported"
    cp "$IMAGES/$name.key" "$mark"
    log "$name imported into the node in $((SECONDS - t0))s"
  done
}

case "${1:-}" in
  system) system_images ;;
  import) shift; import_into_node "$@" ;;
  monitoring) monitoring_images ;;
  kueue) kueue_images ;;
  base) python_base; torch_base ;;
  app)
    python_base
    torch_base
    target kubeclip-controller controller controller "$PYTHON_KEY" --build-arg PYTHON_IMAGE=kubeclip.local/python:3.11-bookworm
    target kubeclip-trainer trainer trainer "$TORCH_KEY" --build-arg "TORCH_IMAGE=kubeclip.local/torch:$TORCH_VERSION"
    import_into_node python kubeclip-controller kubeclip-trainer   # python: for examples/dataset-pvc.yaml's loader
    ;;
  *) echo "usage: $0 system|app|monitoring|kueue|import NAME..." >&2; exit 2 ;;
esac
