#!/usr/bin/env bash
# Stops the cluster tests/cluster/up.sh started in DIR (default /tmp/tollgate-cluster): the
# node's pods, processes, mounts and cgroups if it has one, then the control plane's processes,
# its network namespace and veth pair, and its files. Leaves nothing another cluster owns.
set -uo pipefail
dir=${1:-/tmp/tollgate-cluster}
[[ -f $dir/env ]] || exit 0
dir=$(realpath "$dir")
# shellcheck disable=SC1091
source "$dir/env"

stop() { # PIDFILE: TERM its process group (or the process), then KILL
  [[ -f $1 ]] || return 0
  local pid
  pid=$(cat "$1")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

if [[ -n ${TOLLGATE_CLUSTER_NODE:-} ]]; then
  nd=$dir/node
  # The kubelet first, so it restarts nothing; then every process of every pod (they live in
  # the node's cgroups), the containerd shims that were their parents, and containerd.
  for name in kubelet kube-scheduler kube-proxy coredns; do stop "$nd/$name.pid"; done
  root=$TOLLGATE_CLUSTER_CGROUP_ROOT
  for _ in 1 2 3; do
    pids=$(cat /sys/fs/cgroup/pids"$root"/cgroup.procs /sys/fs/cgroup/pids"$root"/*/cgroup.procs \
      /sys/fs/cgroup/pids"$root"/*/*/cgroup.procs /sys/fs/cgroup/pids"$root"/*/*/*/cgroup.procs \
      /sys/fs/cgroup/pids"$root"/*/*/*/*/cgroup.procs 2>/dev/null)
    [[ -z $pids ]] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.2
  done
  sock=$TOLLGATE_CLUSTER_CONTAINERD
  shims=$(pgrep -f -- "-address $sock( |$)")
  # The shims' own sockets in /run/containerd/s (whatever the config says): only this node's.
  for pid in $shims; do
    ss -xlpn 2>/dev/null | grep -F "pid=$pid," | grep -o '/run/containerd/s/[0-9a-f]*' | xargs -r rm -f
  done
  # shellcheck disable=SC2086
  [[ -n $shims ]] && kill -KILL $shims 2>/dev/null
  stop "$nd/containerd.pid"
  # Mounts under the node's directory (volumes, rootfs, sandboxes' namespaces), deepest first.
  grep -F " $dir/" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null
  # The node's cgroups, deepest first, in every hierarchy.
  for h in /sys/fs/cgroup/*/; do
    [[ -d $h${root#/} ]] && find "$h${root#/}" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip route del "$TOLLGATE_CLUSTER_POD_CIDR" 2>/dev/null
  ip -6 route del "$TOLLGATE_CLUSTER_POD_CIDR6" 2>/dev/null
fi

for name in kube-controller-manager kube-apiserver etcd; do stop "$dir/$name.pid"; done
ip link del "$TOLLGATE_CLUSTER_HOST_IF" 2>/dev/null || true
ip netns del "$TOLLGATE_CLUSTER_NETNS" 2>/dev/null || true
rm -rf "$dir"
