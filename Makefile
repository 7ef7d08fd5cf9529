# mailgate's build and test entry points; README.md explains each.
GO           ?= go
PKGS         ?= ./...
TEST_TIMEOUT ?= 12m
FUZZTIME     ?= 1m
BENCHTIME    ?= 1s

.PHONY: test check vet fmt-check deps fuzz bench build clean install

# The README's test command: tools the tests need as peers, static checks, then every test
# with the race detector.
test: deps check
	$(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)
	cd third_party/go-smtp && $(GO) test -race ./...

# Static checks only: vet, gofmt, and staticcheck when it is installed.
check: vet fmt-check
	@if command -v staticcheck >/dev/null 2>&1; then staticcheck $(PKGS); \
	else echo "staticcheck not installed; skipped (go install honnef.co/go/tools/cmd/staticcheck@latest)"; fi

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

deps:
	bash .ci/install-deps

# Each fuzz target for FUZZTIME (make fuzz FUZZTIME=10m for a longer run).
fuzz:
	bash .ci/fuzz $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/mailgate ./cmd/mailgate

clean:
	rm -rf bin

# Installs the binary and the systemd unit (README: "Installing as a service").
# DESTDIR stages the files elsewhere, e.g. for a package.
PREFIX     ?= /usr/local
SYSTEMDDIR ?= /etc/systemd/system
install: build
	install -D -m 0755 bin/mailgate $(DESTDIR)$(PREFIX)/bin/mailgate
	install -D -m 0644 contrib/mailgate.service $(DESTDIR)$(SYSTEMDDIR)/mailgate.service
