//go:build tools

// Package tools pins the Prometheus server for hack/tools.sh, which builds cmd/prometheus into a
// static binary for the local cluster's monitoring (hack/monitoring.py). Debian's prometheus 2.42
// package cannot serve here: it is built without Kubernetes service discovery, which the
// Prometheus Operator's configuration relies on. Its own go module because Prometheus pins its own
// Kubernetes client libraries. v0.305.0 is Prometheus v3.5.0 (the project tags Go modules v0.3XX.Y).
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
