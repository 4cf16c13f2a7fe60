#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane: etcd, kube-apiserver (Node and RBAC
# authorization, service-account signing and issuer so TokenRequest and TokenReview work,
# admission webhooks on) and kube-controller-manager (namespace, service-account,
# garbage-collector, root-CA, endpoint slice controllers). Without --node there is no kubelet
# and pods stay Pending; with --node, tests/cluster/node.sh joins a real node (containerd,
# kubelet, kube-proxy, kube-scheduler, CoreDNS), the controller manager also runs Deployments,
# and the API server calls webhooks through their Service's cluster IP, as in a cluster.
#
# It runs in a network namespace of its own, joined to this one by a veth pair:
#   this namespace  tg-<name>-h  10.211.N.1  ── what runs outside the cluster (the operator)
#   the namespace   tg-<name>-c  10.211.N.2  ── etcd (on its loopback), the API server :6443
# so the API server can call webhooks at an address that is not loopback (Kubernetes refuses
# loopback endpoints), as it calls a pod's.
#
#   tests/cluster/up.sh [DIR] [--node]   # DIR (default /tmp/tollgate-cluster): kubeconfig, pki, logs
#   tests/cluster/up.sh DIR --ipv6-primary  # a node whose and whose pods' primary address is IPv6
#   KUBECONFIG=DIR/kubeconfig kubectl get ns
#   tests/cluster/down.sh [DIR]
# Prints the directory's environment file (DIR/env) to source: KUBECONFIG, the addresses.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
dir=/tmp/tollgate-cluster
node=false
primary=4
for arg in "$@"; do
  case $arg in
    --node) node=true ;;
    --ipv6-primary) node=true primary=6 ;;
    *) dir=$arg ;;
  esac
done
bin=$("$here/build.sh")
export PATH=$bin:$PATH

if [[ -f $dir/env ]]; then
  "$here/down.sh" "$dir" >/dev/null 2>&1 || true
fi
mkdir -p "$dir"/{pki,logs,etcd}
dir=$(realpath "$dir")

# One subnet per directory, so two control planes can run side by side.
n=$(( $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 200 + 20 ))
name=$(printf '%s' "$dir" | cksum | cut -c1-6)
ns=tg-$name
host_if=tg-$name-h
ns_if=tg-$name-c
host_ip=10.211.$n.1
api_ip=10.211.$n.2

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$host_ip/24" dev "$host_if"
ip link set "$host_if" up
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip addr add "$api_ip/24" dev "$ns_if"
ip netns exec "$ns" ip link set "$ns_if" up

cat > "$dir/env" <<EOF
export KUBECONFIG=$dir/kubeconfig
TOLLGATE_CLUSTER_DIR=$dir
TOLLGATE_CLUSTER_NETNS=$ns
TOLLGATE_CLUSTER_HOST_IF=$host_if
TOLLGATE_CLUSTER_HOST_IP=$host_ip
TOLLGATE_CLUSTER_API=https://$api_ip:6443
TOLLGATE_CLUSTER_BIN=$bin
EOF

# PKI: a CA, the API server's serving certificate, an admin client certificate, and the
# service-account signing key.
pki=$dir/pki
server=https://$api_ip:6443
# shellcheck source=tests/cluster/pki.sh
source "$here/pki.sh"
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -subj "/CN=tollgate-test-ca" \
  -days 2 -out "$pki/ca.crt" 2>/dev/null
cert apiserver "/CN=kube-apiserver" \
  "IP:$api_ip,IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=admin"
cert controller-manager "/CN=system:kube-controller-manager"
# How the API server authenticates to kubelets (logs, exec, port-forward).
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

kubeconfig "$dir/kubeconfig" admin
kubeconfig "$dir/controller-manager.kubeconfig" controller-manager

start() { # NAME COMMAND...: runs in the namespace, logs to logs/NAME.log, pid in NAME.pid
  local name=$1
  shift
  ip netns exec "$ns" setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/$name.pid"
}
wait_for() { # WHAT COMMAND...: until the command succeeds, for 60 s
  local what=$1
  shift
  for _ in $(seq 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$what did not come up; its log:" >&2
  tail -30 "$dir/logs/$what.log" >&2
  exit 1
}

start etcd etcd --data-dir "$dir/etcd" --name tollgate-test \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster tollgate-test=http://127.0.0.1:2380 --log-level warn
wait_for etcd ip netns exec "$ns" curl -sf http://127.0.0.1:2379/health

issuer=https://kubernetes.default.svc.cluster.local
# Without a node, webhooks are reached at their EndpointSlices' addresses (the suites point
# them here); with one, through the Service's cluster IP and kube-proxy, as in a cluster.
routing=true
controllers=namespace-controller,serviceaccount-controller,serviceaccount-token-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,endpointslice-controller,endpointslice-mirroring-controller
if $node; then
  routing=false
  controllers+=,deployment-controller,replicaset-controller,disruption-controller,pod-garbage-collector-controller,node-lifecycle-controller
fi
start kube-apiserver kube-apiserver \
  --etcd-servers http://127.0.0.1:2379 \
  --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port 6443 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer "$issuer" --api-audiences "$issuer" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NamespaceLifecycle,ServiceAccount,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-cluster-ip-range 10.0.0.0/24 \
  --enable-aggregator-routing=$routing \
  --allow-privileged=true \
  --profiling=false
wait_for kube-apiserver kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz

start kube-controller-manager kube-controller-manager \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 \
  --controllers "$controllers" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=true \
  --leader-elect=false
wait_for kube-controller-manager ip netns exec "$ns" curl -sfk https://127.0.0.1:10257/healthz
# The default service account exists once the service-account controller has run.
wait_for kube-controller-manager kubectl --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default

if $node; then
  "$here/node.sh" "$dir" "$primary"
fi
echo "$dir/env"
