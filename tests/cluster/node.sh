#!/usr/bin/env bash
# Joins a real node to the control plane tests/cluster/up.sh started in DIR, so pods run:
# containerd and runc (Debian's), the CNI bridge and portmap plugins, kubelet, kube-proxy
# (nftables) and kube-scheduler from the pinned kubernetes module, and CoreDNS as the cluster
# DNS. Called by `up.sh DIR --node`; stopped by down.sh. The settings that matter on these
# machines, and why, are in shared/docs/REAL-NODE.md.
#
# Everything lives in the control plane's network namespace and under DIR, so the API server
# reaches Services (webhooks) through kube-proxy's rules as in a cluster:
#   the namespace  tg-<name>-c  10.211.N.2   node IP: API server :6443, kubelet :10250, DNS :53
#                  cni0         10.212.N.1   the pods' bridge; pods get 10.212.N.0/24
#                  Services     10.0.0.0/24  kube-proxy; DNS at 10.0.0.10 (a Service to CoreDNS)
#   this namespace routes 10.212.N.0/24 to the node, so a test can reach a pod's IP as another
#   pod would. Pods have IPv6 too (fd00:212:N::/64, routed the same way, via fd00:211:N::2);
#   Services and the node's address stay IPv4.
# Pod cgroups live under a cgroup root of this node's own (/tollgate-<name>); images come from
# tests/cluster/images.sh, imported into this node's containerd with `ctr`.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
dir=$(realpath "${1:?usage: node.sh DIR [4|6]}")
# The node's primary family: 6 makes its first address, and so every pod's first address (the
# one its kubelet probes), IPv6, as in an IPv6-first cluster; Services stay IPv4.
primary=${2:-4}
# shellcheck disable=SC1091
source "$dir/env"
source "$here/versions.env"
export PATH=$TOLLGATE_CLUSTER_BIN:$PATH
ns=$TOLLGATE_CLUSTER_NETNS
node_ip=${TOLLGATE_CLUSTER_API#https://}
node_ip=${node_ip%:*}
n=${node_ip#10.211.}
n=${n%.*}
node=node-$n
pod_cidr=10.212.$n.0/24
pod_gw=10.212.$n.1
pod_cidr6=fd00:212:$n::/64
pod_gw6=fd00:212:$n::1
node_ip6=fd00:211:$n::2
dns_ip=10.0.0.10
cgroup_root=/tollgate-${ns#tg-}
nd=$dir/node
pki=$dir/pki
mkdir -p "$nd"/{cni/net.d,cni/ipam,containerd,kubelet,pods,logs,plugins}
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }

cat >> "$dir/env" <<EOF
TOLLGATE_CLUSTER_NODE=$node
TOLLGATE_CLUSTER_POD_CIDR=$pod_cidr
TOLLGATE_CLUSTER_POD_CIDR6=$pod_cidr6
TOLLGATE_CLUSTER_CONTAINERD=$nd/containerd/containerd.sock
TOLLGATE_CLUSTER_CGROUP_ROOT=$cgroup_root
EOF

# Processes start in the namespace with nsenter (`ip netns exec` remounts /sys, and the cgroup v1
# hierarchies vanish for the child); each writes its own pid file, so down.sh stops the right one.
start() { # NAME COMMAND...
  local name=$1
  shift
  setsid nsenter --net="/run/netns/$ns" bash -c 'echo $$ > "$0"; exec "$@"' "$nd/$name.pid" "$@" \
    > "$nd/logs/$name.log" 2>&1 < /dev/null &
}
wait_for() { # WHAT COMMAND...
  local what=$1
  shift
  for _ in $(seq 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$what did not come up; its log:" >&2
  tail -30 "$nd/logs/$what.log" >&2
  exit 1
}

# Certificates: the kubelet as system:node:NAME (Node authorizer, NodeRestriction); the
# scheduler and kube-proxy as the users their default RBAC names.
server=$TOLLGATE_CLUSTER_API
# shellcheck source=tests/cluster/pki.sh
source "$here/pki.sh"
cert kubelet "/O=system:nodes/CN=system:node:$node"
cert kube-scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
cert coredns "/CN=tollgate-test:coredns"
for who in kubelet kube-scheduler kube-proxy coredns; do kubeconfig "$nd/$who.kubeconfig" "$who"; done

# The node's network: forwarding, bridged traffic through kube-proxy's rules, the pods' bridge
# made up front so the Service range can be routed to it before the first pod.
in_ns sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
  net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 \
  net.ipv4.conf.all.route_localnet=1
in_ns ip link add cni0 type bridge
in_ns ip addr add "$pod_gw/24" dev cni0
in_ns ip -6 addr add "$pod_gw6/64" dev cni0 nodad
in_ns ip link set cni0 up
in_ns ip route add 10.0.0.0/24 dev cni0
ip route replace "$pod_cidr" via "$node_ip"
ip -6 addr add "fd00:211:$n::1/64" dev "$TOLLGATE_CLUSTER_HOST_IF" nodad
in_ns ip -6 addr add "$node_ip6/64" dev "${TOLLGATE_CLUSTER_HOST_IF%-h}-c" nodad
ip -6 route replace "$pod_cidr6" via "$node_ip6"
cat > "$nd/cni/net.d/10-tollgate.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tollgate-test",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$nd/cni/ipam",
        "ranges": [[{ "subnet": "$pod_cidr", "gateway": "$pod_gw" }], [{ "subnet": "$pod_cidr6", "gateway": "$pod_gw6" }]],
        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

# The node's cgroup root, in every v1 hierarchy (a kubelet removes pod cgroups it does not know
# under its root, so each node has its own). cpuset needs its CPUs and memory nodes set first.
for h in /sys/fs/cgroup/*/; do
  [[ -f $h/cgroup.procs ]] || continue
  mkdir -p "$h$cgroup_root"
  if [[ -f $h/cpuset.cpus ]]; then
    cat "$h/cpuset.cpus" > "$h$cgroup_root/cpuset.cpus"
    cat "$h/cpuset.mems" > "$h$cgroup_root/cpuset.mems"
  fi
done

# containerd: state, sockets, runc's root and CNI all under DIR. restrict_oom_score_adj: root
# here may not lower oom_score_adj, and without it every sandbox fails to start.
cd_dir=$nd/containerd
cat > "$cd_dir/config.toml" <<EOF
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$cd_dir/containerd.sock"
[ttrpc]
  address = "$cd_dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cd_dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tollgate.test/pause:$KUBERNETES_VERSION"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$cd_dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni/net.d"
EOF
start containerd containerd --config "$cd_dir/config.toml" --log-level warn
wait_for containerd ctr --address "$cd_dir/containerd.sock" version
# The images every pod here needs: pause for sandboxes, and the suites' host-tools image
# (Tollgate's own are imported by whoever installs it: tests/cluster/images.sh --import).
"$here/images.sh" --import "$cd_dir/containerd.sock" pause host >/dev/null

# kubelet: cgroupfs under the node's own root (cgroup v1 here), its state, logs and plugins
# under DIR; client certificates from the cluster CA are all it accepts.
cat > "$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$cd_dir/containerd.sock
address: "::"
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
  x509: { clientCAFile: $pki/ca.crt }
authorization: { mode: AlwaysAllow }
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: $nd/resolv.conf
podLogsDir: $nd/pods
volumePluginDir: $nd/plugins
failSwapOn: false
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageMinimumGCAge: 24h
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%" }
protectKernelDefaults: false
makeIPTablesUtilChains: false
localStorageCapacityIsolation: false
maxPods: 110
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 4s
EOF
# What pods with dnsPolicy Default resolve with: nothing outside is reachable.
echo "nameserver $dns_ip" > "$nd/resolv.conf"
node_ips=$node_ip
proxy_cidrs=$pod_cidr
if [[ $primary == 6 ]]; then
  node_ips=$node_ip6,$node_ip
  proxy_cidrs=$pod_cidr6,$pod_cidr
fi
start kubelet kubelet --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
  --root-dir "$nd/kubelet" --cert-dir "$nd/kubelet/pki" --hostname-override "$node" \
  --node-ip "$node_ips" --v 1
export KUBECONFIG=$dir/kubeconfig
wait_for kubelet kubectl wait --for=condition=Ready "node/$node" --timeout 1s

cat > "$nd/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: { kubeconfig: $nd/kube-proxy.kubeconfig }
hostnameOverride: $node
clusterCIDR: $proxy_cidrs
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: { maxPerCore: 0 }
nodePortAddresses: [primary]
EOF
start kube-proxy kube-proxy --config "$nd/kube-proxy.yaml"
start kube-scheduler kube-scheduler --kubeconfig "$nd/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig "$nd/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$nd/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false

# The cluster DNS: CoreDNS on the node's address, answering for Services and pods from the API
# (its kubernetes plugin, with the read access its own ClusterRole grants), and a Service at
# 10.0.0.10 whose endpoint is that address, as kubelet's clusterDNS names it.
kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "tollgate-test:coredns" }
rules:
  - { apiGroups: [""], resources: [services, namespaces, pods], verbs: [list, watch] }
  - { apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "tollgate-test:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "tollgate-test:coredns" }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: User, name: "tollgate-test:coredns" }]
---
apiVersion: v1
kind: Service
metadata: { name: kube-dns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  clusterIP: $dns_ip
  ports:
    - { name: dns, port: 53, protocol: UDP, targetPort: 53 }
    - { name: dns-tcp, port: 53, protocol: TCP, targetPort: 53 }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: { kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: tollgate-tests }
addressType: IPv4
ports:
  - { name: dns, port: 53, protocol: UDP }
  - { name: dns-tcp, port: 53, protocol: TCP }
endpoints: [{ addresses: [$node_ip], conditions: { ready: true } }]
EOF
cat > "$nd/Corefile" <<EOF
.:53 {
    bind $node_ip
    errors
    health 127.0.0.1:8053
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $nd/coredns.kubeconfig
        pods insecure
    }
    cache 5
}
EOF
start coredns coredns -conf "$nd/Corefile"
wait_for coredns in_ns curl -sf http://127.0.0.1:8181/ready
wait_for kube-proxy in_ns curl -sf http://127.0.0.1:10256/healthz
wait_for kube-scheduler in_ns curl -sfk https://127.0.0.1:10259/healthz
