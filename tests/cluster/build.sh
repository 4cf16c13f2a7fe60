#!/usr/bin/env bash
# Builds the cluster the suites run against, each part from its own pinned Go module
# (tests/cluster/go/*): kube-apiserver, kube-controller-manager, kubectl, and the node's kubelet,
# kube-scheduler and kube-proxy from k8s.io/kubernetes; etcd from go.etcd.io/etcd/server/v3; helm
# from helm.sh/helm/v4; the cluster DNS from github.com/coredns/coredns; Prometheus and promtool
# from github.com/prometheus/prometheus; an OpenTelemetry Collector from its modules; and the pause binary
# of the node's pod sandboxes from the kubernetes module's own C source (gcc -static). Each is
# cached by its version and its module's files under $TOLLGATE_CACHE (default
# ~/.cache/tollgate): a second run costs seconds. Prints the directory holding the binaries.
#   tests/cluster/build.sh            # build what is missing, print the bin directory
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")"
source versions.env
cache=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/cluster
bin=$cache/bin
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

# NAME VERSION MODULE_DIR LDFLAGS BINARY=PACKAGE...: builds each package into
# $cache/NAME-VERSION-KEY/BINARY (KEY: the module's files, and this script), then
# links it into $bin.
build() {
  local name=$1 version=$2 dir=$3 ldflags=$4
  shift 4
  local key
  key=$(cat "go/$dir"/* "$self" | sha256sum | cut -c1-12)
  local out=$cache/$name-$version-$key
  if [[ ! -f $out/.done ]]; then
    echo "building $name $version (once per version; minutes)" >&2
    rm -rf "$out"
    mkdir -p "$out"
    for target in "$@"; do
      go -C "go/$dir" build -trimpath -ldflags "-s -w $ldflags" -o "$out/${target%%=*}" "${target#*=}"
    done
    touch "$out/.done"
  fi
  for target in "$@"; do
    ln -sfn "$out/${target%%=*}" "$bin/${target%%=*}"
  done
}

# The version stamps Kubernetes' own build sets (hack/lib/version.sh), so /version is real.
k=$KUBERNETES_VERSION
minor=${k#v1.}
minor=${minor%%.*}
kube_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $p.gitVersion=$k -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  kube_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build kubernetes "$k" kubernetes "$kube_ldflags" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
build etcd "$ETCD_VERSION" etcd "" etcd=go.etcd.io/etcd/server/v3
build helm "$HELM_VERSION" helm "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  helm=helm.sh/helm/v4/cmd/helm
build coredns "$COREDNS_VERSION" coredns "" coredns=tollgate.dev/tests/cluster/coredns
# remove_all_sd: Prometheus' own build tag for leaving out the cloud service discoveries; the
# suites scrape static targets.
GOFLAGS="$GOFLAGS -tags=remove_all_sd" build prometheus "$PROMETHEUS_VERSION" prometheus "" \
  prometheus=github.com/prometheus/prometheus/cmd/prometheus \
  promtool=github.com/prometheus/prometheus/cmd/promtool
build otelcol "$OTELCOL_VERSION" otelcol "" otelcol=tollgate.dev/tests/cluster/otelcol

# The pod sandbox's pause process, from the source the kubernetes module ships.
pause=$cache/pause-$k
if [[ ! -f $pause/.done ]]; then
  src=$(go -C go/kubernetes list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  mkdir -p "$pause"
  gcc -Os -static -Wall -Werror -DVERSION="$k" -o "$pause/pause" "$src"
  touch "$pause/.done"
fi
ln -sfn "$pause/pause" "$bin/pause"
echo "$bin"
