#!/usr/bin/env bash
# Prints the path of the ClusterNetworkPolicy CRD as the network-policy API publishes it
# (sigs.k8s.io/network-policy-api, config/crd/standard), taken from its Go module and cached
# under $TOLLGATE_CACHE (default ~/.cache/tollgate) by version. The cluster suite installs it to
# prove what the operator does where a cluster serves that API.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")"
source versions.env
crds=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/cluster/crds
out=$crds/clusternetworkpolicies-$NETWORK_POLICY_API_VERSION.yaml
if [[ ! -f $out ]]; then
  mkdir -p "$crds"
  dir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/network-policy-api@$NETWORK_POLICY_API_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  install -m 0644 "$dir/config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml" "$out.tmp"
  mv "$out.tmp" "$out"
fi
echo "$out"
