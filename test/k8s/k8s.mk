# Kubernetes integration tests: a real etcd + kube-apiserver built from the
# Go module proxy (wrapper modules in test/k8s/etcd and test/k8s/kube-apiserver)
# and cached in ~/.cache/flowtrace/k8s, keyed by the wrappers' go.mod/go.sum
# and the Go version. Include from the top-level Makefile:
#   include test/k8s/k8s.mk
#
# A cold kube-apiserver build takes ~13-15 min on 2 cores (warm Go build
# cache: ~20 s; cached binaries: 0 s). CI should start `make k8s-binaries &`
# early so the build overlaps other work; the tests wait on the same lock.

K8S_TEST_PKGS ?= ./pkg/identity/... ./test/k8s/...
K8S_TEST_TIMEOUT ?= 30m

.PHONY: k8s-binaries test-k8s k8s-clean

## k8s-binaries: build etcd and kube-apiserver into the cache (prints their paths)
k8s-binaries:
	go run ./test/k8s/cmd/k8s-binaries

## test-k8s: identity unit tests + integration tests against the real API server;
## a missing binary or failed build fails (FLOWTRACE_REQUIRE_PRIVILEGED=1), never skips
test-k8s: k8s-binaries
	FLOWTRACE_REQUIRE_PRIVILEGED=1 go test -count=1 -timeout $(K8S_TEST_TIMEOUT) $(K8S_TEST_PKGS)

## k8s-clean: forget the cached binaries
k8s-clean:
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/flowtrace/k8s
