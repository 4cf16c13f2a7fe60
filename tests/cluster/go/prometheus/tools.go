//go:build tools

// Prometheus and promtool, which evaluate, check and unit-test the chart's rules and dashboard,
// from Prometheus' own module.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
