//go:build tools

// Package tools pins kube-apiserver into this wrapper module. The
// k8s.io/kubernetes module zip has no staging/ directory, so its staging
// modules are replaced by their published versions in go.mod and the binary
// is built from here: go build k8s.io/kubernetes/cmd/kube-apiserver
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
