//go:build tools

// Package tools pins Kueue for hack/tools.sh, which builds its manager (cmd/kueue) into a static
// binary for the local cluster's Kueue image (hack/kueue.py, `make kueue-up`). Its own go module
// because Kueue's Kubernetes client libraries differ from those of hack/go; hack/kueue.py also reads
// Kueue's CRDs, RBAC and webhook manifests (config/components) out of this module's copy in the
// Go module cache, so the cluster runs exactly the version built here.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
