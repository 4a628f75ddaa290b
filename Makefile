# mailfwd — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin
# Tools are built once with `go install` into a cache outside the clone.
TOOLS_DIR ?= $(HOME)/.cache/mailfwd/bin
MINIO_VERSION       := v0.0.0-20260212201848-7aac2a2c5b7c
NATS_SERVER_VERSION := v2.15.2
HELM_VERSION        := v3.22.0
KUBE_VERSION        := v1.32.13
ETCD_VERSION        := v3.5.21
# maddy, a third system in make bench, built from the module proxy by scripts/maddy.sh.
MADDY_VERSION       := v0.8.1
MINIO       := $(TOOLS_DIR)/minio-$(MINIO_VERSION)
NATS_SERVER := $(TOOLS_DIR)/nats-server-$(NATS_SERVER_VERSION)
KUBE_APISERVER := $(TOOLS_DIR)/kube-apiserver-$(KUBE_VERSION)
KUBE_ETCD      := $(TOOLS_DIR)/etcd-$(ETCD_VERSION)
KUBECTL        := $(TOOLS_DIR)/kubectl-$(KUBE_VERSION)
HELM           := $(TOOLS_DIR)/helm-$(HELM_VERSION)
MADDY          := $(TOOLS_DIR)/maddy-$(MADDY_VERSION)
# The SBOM generator of make release (CycloneDX, from the Go module proxy).
CYCLONEDX_VERSION := v1.10.0
CYCLONEDX      := $(TOOLS_DIR)/cyclonedx-gomod-$(CYCLONEDX_VERSION)
TEST_TIMEOUT ?= 15m
TEST_ENV := MAILFWD_MINIO_BIN=$(MINIO) MAILFWD_REQUIRE_MINIO=1 MAILFWD_NATS_SERVER_BIN=$(NATS_SERVER) \
	MAILFWD_KUBE_BIN_DIR=$(TOOLS_DIR) MAILFWD_REQUIRE_KUBE=1 MAILFWD_HELM_BIN=$(HELM) MAILFWD_REQUIRE_MAILX=1 MAILFWD_REQUIRE_SWAKS=1 \
	MAILFWD_CYCLONEDX_BIN=$(CYCLONEDX) MAILFWD_REQUIRE_HAPROXY=1 \
	MAILFWD_REQUIRE_PROMETHEUS=1
# The release in `version` output (pkg/control.Version); make build VERSION=v1.2.3.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Release-style builds: no local paths in the binaries (-trimpath), no symbol
# table or DWARF (-s -w); panics still print file:line stack traces.
LDFLAGS := -s -w -X github.com/mailfwd/mailfwd/pkg/control.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build ingress, worker, mailfwdctl, mailfwd-sendmail and the dev all-in-one into ./bin
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/mailfwd-ingress ./cmd/ingress
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/mailfwd-worker ./cmd/worker
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/mailfwdctl ./cmd/ctl
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/mailfwd-sendmail ./cmd/sendmail
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/mailfwd-dev ./cmd/dev

.PHONY: run
run: ## Start a complete forwarder on this machine (embedded NATS, ./var body store, SMTP sink); Ctrl-C stops
	$(GO) run ./cmd/dev --dir var

.PHONY: tools
tools: $(MINIO) $(NATS_SERVER) $(KUBE_APISERVER) $(HELM) $(CYCLONEDX) ## Build the pinned MinIO, nats-server, kube-apiserver, etcd, kubectl, helm and cyclonedx-gomod used by the tests (cached in ~/.cache/mailfwd)

$(MINIO):
	@mkdir -p $(TOOLS_DIR)
	@echo "building MinIO $(MINIO_VERSION) (first time only, a few minutes)"
	GOBIN=$(TOOLS_DIR)/.minio-build $(GO) install github.com/minio/minio@$(MINIO_VERSION)
	mv $(TOOLS_DIR)/.minio-build/minio $@

# One script run builds all three (a grouped target).
$(KUBE_APISERVER) $(KUBE_ETCD) $(KUBECTL) &:
	@echo "building kube-apiserver/kubectl $(KUBE_VERSION) and etcd $(ETCD_VERSION) (first time only, ~5 min)"
	bash scripts/kube-tools.sh $(TOOLS_DIR)

$(HELM):
	HELM_VERSION=$(HELM_VERSION) bash deploy/scripts/helm-tool.sh $(TOOLS_DIR)

$(NATS_SERVER):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR)/.nats-build $(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)
	mv $(TOOLS_DIR)/.nats-build/nats-server $@

CLUSTER_DEBS := containerd runc containernetworking-plugins conntrack iptables gcc libc6-dev

.PHONY: cluster-tools
cluster-tools: ## Build kubelet, controller-manager, scheduler, kube-proxy, CoreDNS, KEDA, Jaeger and their images for test-cluster (cached in ~/.cache/mailfwd; cold ~30 min)
	@command -v containerd >/dev/null && test -x /usr/lib/cni/bridge && command -v gcc >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(CLUSTER_DEBS); }
	GO=$(GO) bash scripts/cluster-tools.sh $(dir $(TOOLS_DIR))

.PHONY: test-cluster
# The cluster runs the images of a release built as `make release` builds one (this machine's
# architecture only), installed from the release's chart: docs/releases.md's way.
CLUSTER_VERSION := 0.0.0-cluster
test-cluster: tools cluster-tools $(CYCLONEDX) ## A real one-node Kubernetes in a network namespace: release images + chart, quickstart, mail via the Service, KEDA burst with shaping, faults, PROXY protocol, cert reload, mailfwdctl, Jaeger trace (root; ~12 min warm)
	rm -rf dist/cluster-images dist/cluster-release && mkdir -p dist/cluster-images
	$(MAKE) --no-print-directory release VERSION=$(CLUSTER_VERSION) ARCHES=$$($(GO) env GOARCH) OUT=$(CURDIR)/dist/cluster-release
	CGO_ENABLED=0 $(GO) build -trimpath -o dist/cluster-bin/sinkd ./tests/cluster/sinkd
	CGO_ENABLED=0 $(GO) build -trimpath -o dist/cluster-bin/proxyd ./tests/cluster/proxyd
	$(GO) run ./tests/cluster/imagewrap -name mailfwd-sink -tag 0.1.0 -binary dist/cluster-bin/sinkd -port 2525/tcp -port 8080/tcp -out dist/cluster-images/mailfwd-sink.tar
	$(GO) run ./tests/cluster/imagewrap -name mailfwd-smtp-proxy -tag 0.1.0 -binary dist/cluster-bin/proxyd -port 2525/tcp -port 2526/tcp -out dist/cluster-images/mailfwd-smtp-proxy.tar
	$(GO) build -o dist/cluster-bin/mailfwdctl ./cmd/ctl
	$(GO) test -c -tags cluster -o dist/cluster-bin/cluster.test ./tests/cluster
	MAILFWD_CTL_BIN=$(CURDIR)/dist/cluster-bin/mailfwdctl MAILFWD_CLUSTER_RELEASE=$(CURDIR)/dist/cluster-release \
		MAILFWD_CLUSTER_VERSION=$(CLUSTER_VERSION) bash scripts/cluster-test.sh \
		$(CURDIR)/dist/cluster-bin/cluster.test -test.v -test.count=1 -test.timeout 40m

.PHONY: image
image: ## Build the ingress, worker, mailfwdctl and mailfwd-sendmail OCI image tarballs into dist/images (no Docker needed)
	$(GO) run ./cmd/image -out dist/images

.PHONY: release
release: $(CYCLONEDX) ## make release VERSION=x.y.z: linux/amd64+arm64 binaries, OCI image archives, the chart, SBOMs and SHA256SUMS in dist/release/VERSION (docs/releases.md)
	@case "$(origin VERSION)" in command\ line|environment) ;; *) echo "make release VERSION=x.y.z (a semantic version)"; exit 2;; esac
	GO=$(GO) VERSION=$(VERSION) CYCLONEDX=$(CYCLONEDX) bash scripts/release.sh

$(CYCLONEDX):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR)/.cyclonedx-build $(GO) install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@$(CYCLONEDX_VERSION)
	mv $(TOOLS_DIR)/.cyclonedx-build/cyclonedx-gomod $@

.PHONY: chart-lint
chart-lint: $(HELM) ## helm lint --strict the chart with its defaults and every examples/*.yaml
	$(HELM) lint --strict charts/mailfwd --set hostname=mail.example.com --set image.registry=registry.example.com/mailfwd
	@for f in charts/mailfwd/examples/*.yaml; do $(HELM) lint --strict charts/mailfwd --set image.registry=registry.example.com/mailfwd -f $$f || exit 1; done

# The real mail clients the sendmail tests drive (bsd-mailx, uuencode). bsd-mailx pulls in
# Debian's default MTA (exim4, local delivery only); the tests never use it: they point
# mailx at mailfwd-sendmail with its "sendmail" variable.
.PHONY: mail-clients
mail-clients: ## Install the real mail clients the tests drive (bsd-mailx, uuencode, swaks with TLS) from Debian
	@{ command -v bsd-mailx && command -v uuencode && command -v swaks && perl -MNet::SSLeay -e1; } >/dev/null 2>&1 || \
	  { apt-get update && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bsd-mailx sharutils swaks libnet-ssleay-perl; }

# HAProxy in front of the ingress for the PROXY protocol v1/v2 tests (tests/proxyproto_test.go);
# only the binary is used, the Debian service is never started.
.PHONY: haproxy
haproxy: ## Install HAProxy from Debian (the PROXY protocol tests run it on loopback)
	@command -v haproxy >/dev/null 2>&1 || { apt-get update && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy; }

.PHONY: prometheus
prometheus: ## Install Prometheus and promtool from Debian (the alert-rule tests and the dashboard/rules query test)
	@{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || \
	  { apt-get update && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }

.PHONY: test-rules
test-rules: prometheus ## Check the chart's alert rules and run their unit tests (promtool check rules, promtool test rules)
	promtool check rules charts/mailfwd/files/alerts.yaml
	promtool test rules tests/rules/alerts_test.yaml

.PHONY: test
test: tools mail-clients haproxy prometheus ## Run every test: unit, integration (real NATS, MinIO, DNS, SMTP on loopback), alert rules, vet and gofmt
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test-rules
	$(TEST_ENV) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory test-go-smtp

# The patched go-smtp is a module of its own (go test ./... above skips it).
# Upstream's TestServerAcceptErrorHandling is flaky under -race on pristine
# v0.25.1 too (third_party/go-smtp/PATCHES.md), so it is skipped here.
.PHONY: test-go-smtp
test-go-smtp: ## Test the patched go-smtp in third_party/go-smtp (its own module)
	cd third_party/go-smtp && $(GO) vet ./... && $(GO) test -race -count=1 -skip '^TestServerAcceptErrorHandling$$' ./...

.PHONY: test-unit
test-unit: ## Run the package tests only (no tests/ suite)
	$(TEST_ENV) $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /tests)

.PHONY: test-integration
test-integration: tools mail-clients haproxy prometheus ## Run the end-to-end suite in tests/
	$(TEST_ENV) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v ./tests/...

.PHONY: bench
bench: tools ## mailfwd (single node, chart, R3) vs a private Postfix vs maddy vs smtp-source→smtp-sink, interleaved (BENCH_QUICK=1 for a few minutes); CSV in bench-results/
	@command -v smtp-source >/dev/null || { apt-get update && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; }
	GO=$(GO) TOOLS_DIR=$(TOOLS_DIR) MADDY_VERSION=$(MADDY_VERSION) bash scripts/maddy.sh
	MAILFWD_MINIO_BIN=$(MINIO) MAILFWD_NATS_SERVER_BIN=$(NATS_SERVER) MAILFWD_MADDY_BIN=$(MADDY) $(GO) run ./bench
	$(MAKE) --no-print-directory bench-go

.PHONY: bench-go
bench-go: tools ## In-process Go benchmarks: end-to-end rate, healthy-domain latency with a 10k dead-domain backlog, the cost of fleet-wide limits (CPU, latency)
	$(TEST_ENV) $(GO) test -run '^$$' -bench . -benchtime 2000x -timeout 20m ./tests/...
	# Fleet shaping: healthy-mail latency beside dribbling and tarpit destinations (docs/shaping.md).
	$(GO) test -run '^$$' -bench BenchmarkHealthyBesideSlowHops -benchtime 20x -timeout 10m ./pkg/worker

.PHONY: chaos
chaos: tools ## Fault suite with a ledger of every 250: workers, ingress, NATS, MinIO killed; destination down (minutes)
	MAILFWD_MINIO_BIN=$(MINIO) MAILFWD_NATS_SERVER_BIN=$(NATS_SERVER) CHAOS_SUMMARY=$(CURDIR)/bench-results/chaos-summary.txt $(GO) test -tags chaos -count=1 -timeout 15m -v ./tests/chaos/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 20s): addresses, policy parsers, SMTP session, DSN, resolver
	GO=$(GO) FUZZTIME=$${FUZZTIME:-20s} bash scripts/fuzz.sh

.PHONY: lint
lint: ## go vet and gofmt
	$(GO) vet ./...
	$(GO) vet -tags chaos ./tests/chaos/
	$(GO) vet -tags cluster ./tests/cluster/
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: clean
clean: ## Remove build output and the dev state in ./var
	rm -rf $(BIN) var dist
