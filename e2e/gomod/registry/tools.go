//go:build tools

// Package tools pins the one command build.sh makes from this module, so `go mod tidy` keeps its graph.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
