// cert-manager's CRDs for the e2e suite (the chart's cert-manager option is checked with a server-side dry run):
// the files of the cert-manager Go module's deploy/crds at this version, verified by go.sum. build.sh copies them
// next to the cluster's binaries (`build.sh --cert-manager`). cert-manager's controller and cainjector are not run:
// the Go proxy does not serve the modules of its commands, and this project does not copy their source.
module kestrel.local/e2e/gomod/certmanager

go 1.26.0

require github.com/cert-manager/cert-manager v1.21.1
