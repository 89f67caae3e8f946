//go:build tools

// Package tools pins the MPI Operator main package so `go mod tidy` keeps its graph.
package tools

import _ "github.com/kubeflow/mpi-operator/cmd/mpi-operator"
