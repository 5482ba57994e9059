# flowtrace-hubble: the Hubble Observer API adapter and its end-to-end test
# with the real hubble CLI. Included from the top-level Makefile; both live
# in their own Go modules (cmd/flowtrace-hubble, .../tools/hubble) so that
# cilium's requirements never join flowtrace's go.mod.
HUBBLE_DIR       := cmd/flowtrace-hubble
HUBBLE_TOOLS     := $(HUBBLE_DIR)/tools/hubble
# The real CLI (~3 min cold, ~140 MB) is cached by its module's go.sum.
HUBBLE_CLI_KEY   := $(shell sha256sum $(HUBBLE_TOOLS)/go.mod $(HUBBLE_TOOLS)/go.sum 2>/dev/null | sha256sum | cut -c1-16)
HUBBLE_CLI       := $(CACHE)/hubble/$(HUBBLE_CLI_KEY)/hubble
HUBBLE_ADAPTER   := bin/flowtrace-hubble

.PHONY: hubble-build hubble-cli hubble-test

hubble-build:
	cd $(HUBBLE_DIR) && $(GO) build -mod=mod -trimpath -ldflags "-X main.version=$(VERSION)" -o $(CURDIR)/$(HUBBLE_ADAPTER) .

$(HUBBLE_CLI): $(HUBBLE_TOOLS)/go.mod $(HUBBLE_TOOLS)/go.sum
	mkdir -p $(dir $@)
	cd $(HUBBLE_TOOLS) && $(GO) build -trimpath -o $@.tmp github.com/cilium/cilium/hubble && mv $@.tmp $@

hubble-cli: $(HUBBLE_CLI)

# Unit tests need nothing; the end-to-end test needs root (lab, agent) and
# the CLI, and under FLOWTRACE_REQUIRE_PRIVILEGED=1 fails instead of skipping.
hubble-test: deps $(HUBBLE_CLI)
	cd $(HUBBLE_DIR) && $(GO) vet -mod=mod ./... && \
		FLOWTRACE_HUBBLE_BIN=$(HUBBLE_CLI) $(GO) test -mod=mod -race -count=1 -timeout 15m ./...
