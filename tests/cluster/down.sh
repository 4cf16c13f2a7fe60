#!/usr/bin/env bash
# Stops the control plane tests/cluster/up.sh started in DIR (default /tmp/tollgate-cluster):
# its processes, its network namespace and veth pair, and its files.
set -uo pipefail
dir=${1:-/tmp/tollgate-cluster}
[[ -f $dir/env ]] || exit 0
# shellcheck disable=SC1091
source "$dir/env"
for name in kube-controller-manager kube-apiserver etcd; do
  if [[ -f $dir/$name.pid ]]; then
    pid=$(cat "$dir/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
done
ip link del "$TOLLGATE_CLUSTER_HOST_IF" 2>/dev/null || true
ip netns del "$TOLLGATE_CLUSTER_NETNS" 2>/dev/null || true
rm -rf "$dir"
