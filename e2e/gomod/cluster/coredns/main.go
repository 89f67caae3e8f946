// Command coredns is CoreDNS with only the plugins the e2e real node needs: `kubernetes` (Service and
// headless pod records, which the MPI Operator's hostfile names resolve through), plus errors, log,
// health and ready. The stock main imports every plugin (cloud DNS providers included), a much larger
// build; coremain + a short directive list is CoreDNS's documented way to build a custom server.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// Order matters: it is the order plugins see a query (CoreDNS's plugin.cfg order for these five).
	dnsserver.Directives = []string{"errors", "health", "ready", "log", "kubernetes"}
}

func main() {
	coremain.Run()
}
