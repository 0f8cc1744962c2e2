//go:build tools

// Package tools pins CoreDNS for hack/tools.sh, which builds its main package (the default plugin
// set, including `kubernetes`) into a static binary for the local cluster's DNS image. Its own go
// module because CoreDNS's Kubernetes client libraries differ from those of hack/go.
package tools

import _ "github.com/coredns/coredns"
