#!/usr/bin/env bash
# Prints the directory holding the Prometheus Operator's PodMonitor and PrometheusRule CRDs as
# it publishes them (github.com/prometheus-operator/prometheus-operator, example/
# prometheus-operator-crd), taken from its Go module and cached under $TOLLGATE_CACHE (default
# ~/.cache/tollgate) by version. The chart's monitoring objects are validated against them
# (test_chart.py) and installed where they are served (test_cluster.py).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")"
source versions.env
out=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/cluster/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
if [[ ! -f $out/.done ]]; then
  mkdir -p "$out"
  dir=$(cd "$(mktemp -d)" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for kind in podmonitors prometheusrules; do
    install -m 0644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
  done
  touch "$out/.done"
fi
echo "$out"
