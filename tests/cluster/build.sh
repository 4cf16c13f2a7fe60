#!/usr/bin/env bash
# Builds the control plane the cluster suites run against, each from its own pinned Go module
# (tests/cluster/go/*): kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes,
# etcd from go.etcd.io/etcd/server/v3, helm from helm.sh/helm/v4. Each is cached by its version
# and its module's files under $TOLLGATE_CACHE (default ~/.cache/tollgate): a second run costs
# seconds. Prints the directory holding the binaries.
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
# $cache/NAME-VERSION-KEY/BINARY (KEY: the module's go.mod and go.sum, and this script), then
# links it into $bin.
build() {
  local name=$1 version=$2 dir=$3 ldflags=$4
  shift 4
  local key
  key=$(cat "go/$dir/go.mod" "go/$dir/go.sum" "$self" | sha256sum | cut -c1-12)
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
  kubectl=k8s.io/kubernetes/cmd/kubectl
build etcd "$ETCD_VERSION" etcd "" etcd=go.etcd.io/etcd/server/v3
build helm "$HELM_VERSION" helm "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  helm=helm.sh/helm/v4/cmd/helm
echo "$bin"
