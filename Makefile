# gpu-power: per-GPU power limits for Kubernetes pods (power-webhook, power-agent).

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

# The Kubernetes version is written in one place, hack/go.mod, whose
# k8s.io/kubernetes module hack/build-k8s.sh builds the binaries from; the
# script is the one reader of it.
K8S_VERSION := $(shell hack/build-k8s.sh --version)
LOCALBIN    := $(CURDIR)/bin
TOOLS       := $(LOCALBIN)/tools
# Test binaries (etcd, kube-apiserver, kubectl); KUBEBUILDER_ASSETS wins when set.
KUBEBUILDER_ASSETS ?= $(LOCALBIN)/k8s/$(K8S_VERSION)
export KUBEBUILDER_ASSETS
# go-nvml's headers use deprecated declarations; cgo is needed by the agent only.
export CGO_CFLAGS := -Wno-deprecated-declarations

GOLANGCI_LINT_VERSION   ?= v2.15.0
CONTROLLER_TOOLS_VERSION ?= v0.23.0
HELM_VERSION            ?= v4.3.1
FUZZTIME ?= 30s
BENCHTIME ?= 2s

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Build

# The shipped binaries' build flags, the same as the images' and the
# Dockerfiles' (internal/imagebuild.BuildFlags; test/manifests compares them).
BUILD_FLAGS := -trimpath -ldflags='-s -w'

.PHONY: build
build: ## Build every binary in cmd/ into bin/ (the webhook without cgo), as the images carry them.
	@for d in cmd/*/; do \
		name=power-$$(basename $$d); \
		echo "go build $(BUILD_FLAGS) -o bin/$$name ./$$d"; \
		if [ "$$name" = power-webhook ]; then CGO_ENABLED=0 go build $(BUILD_FLAGS) -o bin/$$name ./$$d; \
		else go build $(BUILD_FLAGS) -o bin/$$name ./$$d; fi; \
	done

.PHONY: manifests
manifests: $(TOOLS)/controller-gen ## Generate deepcopy code and the GPUPowerBudget CRD (deploy/webhook/10-crd-gpupowerbudgets.yaml, and its copy in the Helm chart) from api/.
	$(TOOLS)/controller-gen object paths=./api/...
	$(TOOLS)/controller-gen crd paths=./api/... output:crd:dir=$(LOCALBIN)/crd
	mv $(LOCALBIN)/crd/power.dynamo.nvidia.com_gpupowerbudgets.yaml deploy/webhook/10-crd-gpupowerbudgets.yaml
	$(MAKE) chart-files

.PHONY: chart-files
chart-files: ## Copy into the Helm chart what it renders from files/: the CRD and the monitoring bundle (test/helm fails when they differ).
	cp deploy/webhook/10-crd-gpupowerbudgets.yaml deploy/helm/gpu-power/files/crd-gpupowerbudgets.yaml
	cp deploy/monitoring/podmonitors.yaml deploy/monitoring/prometheusrule.yaml deploy/monitoring/grafana-dashboard.json deploy/helm/gpu-power/files/monitoring/

IMAGE_REPO ?= ghcr.io/dynamo-power
IMAGE_TAG  ?= v0.1.0
IMAGE_DIR  ?= $(LOCALBIN)/images
# Push when IMAGE_REPO is given (command line or environment); IMAGE_PUSH=0 builds only.
IMAGE_PUSH ?= $(if $(filter-out file,$(origin IMAGE_REPO)),1,0)

.PHONY: images
images: ## Build both images, no Docker needed, as bin/images/power-{webhook,agent}.tar; with IMAGE_REPO=registry/team given, push them and print each repo@sha256 to pin.
	go run ./internal/imagebuild/cmd/images --bin-dir $(LOCALBIN) --out $(IMAGE_DIR) --repo $(IMAGE_REPO) --tag $(IMAGE_TAG) $(if $(filter 1,$(IMAGE_PUSH)),--push)

##@ Try it

.PHONY: demo
demo: envtest build ## Play the planner scenario here (real API server + cert-manager, both binaries, simulated GPUs); exits 0 only if every step behaved.
	@echo "go build -o bin/power-sandbox ./test/framework/sandbox/cmd/sandbox"
	@go build -o bin/power-sandbox ./test/framework/sandbox/cmd/sandbox
	bin/power-sandbox --bin-dir bin demo

.PHONY: up
up: ## Start the same environment and keep it running until Ctrl-C (prints the KUBECONFIG). REAL_NODE=1: both manifests as real pods on a real kubelet here (Linux, root).
ifeq ($(REAL_NODE),1)
	$(MAKE) up-real-node
else
	$(MAKE) envtest build
	@echo "go build -o bin/power-sandbox ./test/framework/sandbox/cmd/sandbox"
	@go build -o bin/power-sandbox ./test/framework/sandbox/cmd/sandbox
	bin/power-sandbox --bin-dir bin $(if $(SANDBOX_DIR),--dir $(SANDBOX_DIR)) up
endif

##@ Real node (Linux, as root; docs/cluster.md)

GPUS ?= 2
# Simulated H100s beyond GPUS that a fake of NVIDIA's DRA driver publishes.
DRA_GPUS ?= 2

.PHONY: cluster-binaries
cluster-binaries: ## Build etcd, kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler from Go modules (skipped when built).
	K8S_BIN_DIR=$(KUBEBUILDER_ASSETS) hack/build-k8s.sh etcd kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler

.PHONY: cluster-up
cluster-up: cluster-binaries ## Start a real one-node cluster here (containerd, kubelet, controllers; GPUs simulated); prints the KUBECONFIG.
	go run ./test/framework/realnode/cmd/realnode up --k8s-bin $(KUBEBUILDER_ASSETS) --gpus $(GPUS) --dra-gpus $(DRA_GPUS)

.PHONY: up-real-node
up-real-node: cluster-binaries ## `make up` on a real node: cluster-up, then both manifests applied and Ready (Linux, root).
	go run ./test/framework/realnode/cmd/realnode up --install --k8s-bin $(KUBEBUILDER_ASSETS) --gpus $(GPUS) --dra-gpus $(DRA_GPUS)

.PHONY: cluster-down
cluster-down: ## Stop the real node and put the machine back as it was.
	go run ./test/framework/realnode/cmd/realnode down

.PHONY: test-cluster
test-cluster: cluster-binaries $(TOOLS)/helm ## Both manifests as real pods on a real kubelet, then the Helm chart installed and uninstalled there; teardown restores the host.
	go test -count=1 -timeout 40m -v ./test/e2e_node/...

##@ Test

.PHONY: test
test: test-unit test-integration test-e2e test-cluster ## Run every test: unit, integration, end to end on a real API server, and both manifests on a real node (root).

.PHONY: test-unit
test-unit: ## The one-minute loop: unit tests, fuzz seeds, manifest and Helm chart golden tests, gofmt and vet; no API server, no binary built.
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "not gofmt-clean: $$unformatted"; exit 1; fi
	go vet ./...
	@# The TestBuilt* tests (images, Dockerfiles) compile both binaries: test-integration runs them.
	go test -count=1 -skip '^TestBuilt' ./pkg/... ./internal/... ./cmd/... ./test/manifests/... ./test/framework/...
	@# The Helm chart against the manifests: a module of its own (test/helm/go.mod), Helm's SDK kept out of the binaries' dependencies.
	cd test/helm && go vet ./... && go test -count=1 ./...

.PHONY: test-integration
test-integration: envtest ## Integration tests on a real kube-apiserver + etcd (builds them first), and both binaries built as the Dockerfiles build them.
	go test -count=1 -run '^TestBuilt' ./internal/imagebuild/ ./test/manifests/...
	@# One package at a time: each picks free ports before its processes bind them.
	go test -count=1 -p 1 ./test/integration/...

.PHONY: test-e2e
test-e2e: envtest ## End to end: both manifest folders applied with kubectl, cert-manager's controllers issuing the certificate.
	go test -count=1 ./test/e2e/...

.PHONY: envtest
envtest: ## Build etcd, kube-apiserver and kubectl from Go modules (~12 min cold, skipped when built).
	K8S_BIN_DIR=$(KUBEBUILDER_ASSETS) hack/build-k8s.sh

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 30s).
	@for pkg in $$(go list ./pkg/... ./internal/...); do \
		for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

.PHONY: bench
bench: ## Run the benchmarks of docs/benchmarks.md.
	go test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count 6 ./pkg/... | tee bin/bench.txt

.PHONY: bench-agent-memory
bench-agent-memory: envtest ## The agent's RSS with 110 pods of ~1 MiB on its node (docs/benchmarks.md); writes 110 MiB of pods, so not part of make test.
	AGENT_MEMORY_SOAK=1 go test -count=1 -v -run SoakMemoryWithFatPods ./test/integration/agent

# The scale benchmarks' sandboxes (etcd's data among them) go to a fresh
# folder here, tmpfs where the machine has one; kept only when a run fails.
BENCH_TMPDIR ?= $(if $(wildcard /dev/shm),/dev/shm,/tmp)
define bench-in-tmpdir
	@tmp=$$(mktemp -d -p $(BENCH_TMPDIR) power-bench.XXXXXX); rc=0; \
	echo "TMPDIR=$$tmp $(1)"; TMPDIR=$$tmp $(1) || rc=$$?; \
	if [ $$rc = 0 ]; then rm -rf "$$tmp"; else echo "files kept in $$tmp"; fi; exit $$rc
endef

.PHONY: bench-scale
bench-scale: envtest build ## Opt-in, not in make test: the webhook's memory per pod, restart time and admission latency with 5,000 nodes and 100,000 pods in the sandbox (test/scale; SCALE_NODES, SCALE_GPU_PODS, SCALE_OTHER_PODS, SCALE_REPORT=file); minutes, 100,000 pods written.
	$(call bench-in-tmpdir,SCALE_BENCH=1 go test -count=1 -v -timeout 45m -run '^TestScaleCluster$$' ./test/scale)

.PHONY: bench-admission
bench-admission: envtest build ## Opt-in, not in make test: webhook and API server CPU per admission, 2,000 GPU pods into an intercepted and a skipped namespace, alternately (test/scale; ADMISSION_ROUNDS, ADMISSION_BUDGET=1, ADMISSION_FLOOR=1, ADMISSION_PPROF=file, ADMISSION_PPROF_KIND=allocs, ADMISSION_REPORT=file).
	$(call bench-in-tmpdir,ADMISSION_BENCH=1 go test -count=1 -v -timeout 30m -run '^TestAdmissionCPU$$' ./test/scale)

.PHONY: lint
lint: $(TOOLS)/golangci-lint ## gofmt, go vet and golangci-lint.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	go vet ./...
	$(TOOLS)/golangci-lint run ./...
	cd test/helm && $(TOOLS)/golangci-lint run ./...

$(TOOLS)/golangci-lint:
	GOBIN=$(TOOLS) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

$(TOOLS)/controller-gen:
	GOBIN=$(TOOLS) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)

.PHONY: helm
helm: $(TOOLS)/helm ## Build the helm CLI (helm.sh/helm/v4, HELM_VERSION) into bin/tools from its Go module.

$(TOOLS)/helm:
	CGO_ENABLED=0 GOBIN=$(TOOLS) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

.PHONY: clean
clean: ## Remove built binaries (keeps the Kubernetes test binaries in bin/k8s).
	rm -f bin/power-* bin/bench.txt
