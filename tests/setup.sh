#!/usr/bin/env bash
# Installs every peer the test suites use: Python packages in tests/.venv (and the 1.x MCP SDK
# in tests/.venv-mcp1), npm packages in tests/node_modules. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }
if [[ ! -f .venv/.stamp || "$(cat .venv/.stamp)" != "$(stamp requirements.txt)" ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  stamp requirements.txt > .venv/.stamp
fi
if [[ ! -f .venv-mcp1/.stamp || "$(cat .venv-mcp1/.stamp)" != "$(stamp requirements-mcp1.txt)" ]]; then
  python3 -m venv .venv-mcp1
  .venv-mcp1/bin/pip install -q --disable-pip-version-check -r requirements-mcp1.txt
  stamp requirements-mcp1.txt > .venv-mcp1/.stamp
fi
if [[ ! -f node_modules/.stamp || "$(cat node_modules/.stamp)" != "$(stamp package.json)" ]]; then
  npm install --no-audit --no-fund --loglevel=error
  stamp package.json > node_modules/.stamp
fi
# The cluster suites' control plane (tests/cluster): kube-apiserver, kube-controller-manager,
# kubectl, etcd and helm built from their pinned Go modules, once per version (cached), and the
# Debian tools that run it in a network namespace of its own; iptables for the pod-boundary
# suite (both back ends, both families); Redis for the shared-counters suite.
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables-legacy >/dev/null && command -v ip6tables-nft >/dev/null || need+=(iptables)
command -v setpriv >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# The shared-counters suite's Redis (a server, and a Redis Cluster it makes with redis-cli).
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || need+=(redis-server redis-tools)
command -v containerd >/dev/null && command -v ctr >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/portmap ]] || need+=(containernetworking-plugins)
command -v nft >/dev/null || need+=(nftables)
command -v nsenter >/dev/null || need+=(util-linux)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if (( ${#need[@]} )); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cluster/build.sh >/dev/null
cluster/crds.sh >/dev/null
