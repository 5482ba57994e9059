# Benchmarks (issue 7). Included by the top-level Makefile; uses its GO and BIN.
#   make bench        the full suite: testbed rounds (minutes), then Go benchmarks
#   make bench-smoke  seconds-long run that only checks every stage still works (CI)
# BENCH_FLAGS passes extra flags to ftbench, e.g.
#   make bench BENCH_FLAGS='--rounds 5 --tracer-cmd "pwru --output-file /dev/null"'

FTBENCH          := bin/ftbench
# The Go benchmarks run with -p 1, one package at a time: two packages' benchmarks
# at once share this machine's two CPUs and halve each other's figures.
BENCH_GO_PKGS    := ./pkg/decode/ ./pkg/enrich/ ./pkg/filters/ ./pkg/printer/ ./pkg/agent/
BENCH_FLAGS      ?=
BENCH_SMOKE_OUT  ?= $(or $(TMPDIR),/tmp)/ftbench-smoke.json

.PHONY: bench bench-smoke bench-deps bench-go

# The testbed needs iperf3 and tcpdump (the baseline); test/setup.sh installs both.
bench-deps: deps

$(FTBENCH): FORCE_FTBENCH
	$(GO) build -o $@ ./bench/cmd/ftbench
.PHONY: FORCE_FTBENCH
FORCE_FTBENCH:

bench: bench-deps build $(FTBENCH)
	$(FTBENCH) --flowtrace-bin $(BIN) --out bench/results/latest.json $(BENCH_FLAGS)
	set -o pipefail; $(GO) test -p 1 -run '^$$' -bench . -benchmem -count 1 $(BENCH_GO_PKGS) | tee bench/results/go-bench.txt

bench-go:
	set -o pipefail; $(GO) test -p 1 -run '^$$' -bench . -benchmem -count 1 $(BENCH_GO_PKGS) | tee bench/results/go-bench.txt

# Asserts nothing about speed: fails only when a stage (testbed, a tracer,
# a workload, the storm accounting, the held-flows phase, a Go benchmark or
# the zero-allocation decode test) breaks.
bench-smoke: bench-deps build $(FTBENCH)
	$(FTBENCH) --smoke --flowtrace-bin $(BIN) --out $(BENCH_SMOKE_OUT) $(BENCH_FLAGS)
	$(GO) test -count 1 -run 'ZeroAllocs' -bench . -benchtime 100x $(BENCH_GO_PKGS)
