# flowtrace — see README.md. Every target does its own set-up.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

GO        ?= go
BIN       := bin/flowtrace
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CACHE     ?= $(HOME)/.cache/flowtrace
TOOLS_BIN := $(CACHE)/bin
# Pinned generators (tools/ and tools/buf/ are their own Go modules).
TOOLS_KEY := $(shell cat tools/go.sum tools/buf/go.sum 2>/dev/null | sha256sum | cut -c1-16)
TOOLS_OK  := $(TOOLS_BIN)/.ok-$(TOOLS_KEY)

.PHONY: all build deps demo test test-unit generate generate-bpf generate-proto check-generate lint clean

all: build

deps:
	@bash test/setup.sh

# Static (no cgo): nothing needs libc, the binary runs in any image, and
# the agent does not map libc (~1.3 MB of its RSS).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/flowtrace

# The built-in lab: namespaces, a policy drop, the agent, and the drop it reports.
demo: deps build
	@bash test/demo.sh $(BIN)

# The whole suite. As root it includes the privileged tests (BPF, netns,
# attach); FLOWTRACE_REQUIRE_PRIVILEGED=1 turns their skips into failures.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m ./...

test-unit:
	$(GO) test -count=1 ./pkg/decode/... ./pkg/filters/... ./pkg/printer/... ./pkg/enrich/... ./pkg/dropreason/...

$(TOOLS_OK): tools/go.mod tools/go.sum tools/buf/go.mod tools/buf/go.sum
	mkdir -p $(TOOLS_BIN)
	cd tools && $(GO) build -o $(TOOLS_BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	cd tools/buf && $(GO) build -o $(TOOLS_BIN)/ github.com/bufbuild/buf/cmd/buf
	rm -f $(TOOLS_BIN)/.ok-* && touch $@

generate: generate-bpf generate-proto

generate-bpf: deps
	cd pkg/datapath && $(GO) generate ./...

generate-proto: $(TOOLS_OK)
	cd proto && PATH=$(TOOLS_BIN):$$PATH buf lint && PATH=$(TOOLS_BIN):$$PATH buf generate

# CI: the committed generated code must be exactly what the sources produce.
check-generate: generate
	@git diff --exit-code -- pkg/datapath proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- pkg/datapath proto)" || { git status --porcelain -- pkg/datapath proto; echo "untracked generated files"; exit 1; }

clean:
	rm -rf bin

# Other kernels under qemu (make vm-test) and the Vagrantfile check.
include test/vm/vm.mk
# A real etcd + kube-apiserver for the Kubernetes identity tests.
include test/k8s/k8s.mk
# The Hubble Observer API adapter and its test with the real hubble CLI.
include cmd/flowtrace-hubble/hubble.mk
# Benchmarks: make bench (minutes), make bench-smoke (CI: stages still work).
include bench/bench.mk
