# The README's two commands: `make dev` and `make test`.
GO ?= go

.PHONY: test test-chromium test-matrix cross dev build vet bench bench-text chaos

test: vet
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 30m ./...
	@if command -v chromium >/dev/null 2>&1; then $(MAKE) --no-print-directory test-chromium; \
	else echo "chromium not installed: skipping the status page test (apt-get install -y chromium)"; fi

# The status page loaded in headless Chromium (build tag chromium).
test-chromium:
	$(GO) test -race -count=1 -timeout 5m -tags chromium -run TestStatusPage ./cmd/cdc

# The tests that depend on the server's behaviour, for the source→chat
# pairs 15→18, 18→15, 16→17, 17→16 and 18→18 (.ci/install-pg installs the
# versions); MATRIX="15:18" picks pairs.
MATRIX ?=
test-matrix:
	.ci/matrix $(MATRIX)

vet:
	$(GO) vet ./...
	$(GO) vet -tags chromium ./cmd/cdc

# cdc builds and vets on the other systems developers use (Linux-only code
# sits behind build tags with a fallback); CI runs this after the tests.
CROSS ?= darwin/arm64 windows/amd64 freebsd/amd64
cross:
	@for t in $(CROSS); do echo "go vet ./... for $$t"; GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./... || exit 1; done

dev:
	$(GO) run ./cmd/cdc dev

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/cdc ./cmd/cdc

# cdc against PostgreSQL's native logical replication, in one run per
# table shape: the reference table (every phase, the rate sweep and a
# 1M-row transaction; about 40 minutes on 2 cores), then a wide one (copy,
# backlog, steady; about 8 minutes); see BENCHMARKS.md. bench-text repeats
# the reference table's core phases with WIRE_FORMAT=text, to weigh the
# wire format.
bench:
	$(GO) run ./cmd/cdc-bench --rows 1000000 --out bench-result.md
	$(GO) run ./cmd/cdc-bench --shape wide --core --sweep "" --big-tx 0 --rows 300000 --out bench-wide.md

bench-text:
	$(GO) run ./cmd/cdc-bench --core --wire text --big-tx 0 --rows 1000000 --out bench-text.md

# The full chaos suite (kill -9 ×20, restarts, proxy faults ×10 each, chat
# down 2 minutes, …); the short version runs in make test. See README.
chaos:
	CHAOS=full $(GO) test -race -count=1 -timeout 60m -run TestChaos -v ./cmd/cdc
