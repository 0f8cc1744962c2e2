//go:build tools

// Package tools pins the Prometheus Operator for hack/tools.sh, which builds its operator and
// config-reloader commands into static binaries for the local cluster's monitoring images
// (hack/monitoring.py). Its own go module because the operator's Kubernetes client libraries
// differ from those of hack/go.
package tools

import (
	_ "github.com/prometheus-operator/prometheus-operator/cmd/operator"
	_ "github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader"
)
