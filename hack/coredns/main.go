// Command coredns is CoreDNS with only the plugins the local cluster's Corefile
// (hack/node/coredns.yaml) uses, plus log, loop, reload and forward for people editing it.
//
// CoreDNS's own main imports every plugin (cloud DNS providers, tracing, geoip...), whose SDKs
// made the cold build of the local cluster take about ten minutes on the CI machine; a plugin
// set of our own is CoreDNS's documented way to build a custom server. Directives must keep
// CoreDNS's execution order (core/dnsserver/zdirectives.go), which is the order listed here.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{
		"reload", "ready", "health", "prometheus", "errors", "log", "cache", "kubernetes", "loop", "forward",
	}
}

func main() {
	coremain.Run()
}
