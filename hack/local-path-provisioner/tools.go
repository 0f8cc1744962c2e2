//go:build tools

// Package tools pins rancher's local-path-provisioner for hack/tools.sh, which builds it into a
// static binary for the local cluster's default StorageClass. Its own go module because its
// Kubernetes client libraries differ from those of hack/go.
package tools

import _ "github.com/rancher/local-path-provisioner"
