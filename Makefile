# kiln — build, test and run. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
TOOLS := $(CURDIR)/bin/tools
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.1
MODULES = $(shell $(GO) list -f '{{.Dir}}' -m)
BINARIES := kilnd kiln kiln-gateway kiln-scheduler kiln-agent

.PHONY: help
help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

.PHONY: dev-env
dev-env: ## install what is missing, start dockerd and a registry on 127.0.0.1:5000 if none answers
	@scripts/dev-env.sh up

.PHONY: dev-down
dev-down: ## stop the dockerd and registry that dev-env started (by pid)
	@scripts/dev-env.sh down

.PHONY: build
build: ## build kilnd, kiln, kiln-gateway, kiln-scheduler, kiln-agent into bin/
	@mkdir -p bin
	$(GO) build -o bin/kilnd ./cmd/kilnd
	$(GO) build -o bin/kiln ./sdk/cmd/kiln
	$(GO) build -o bin/kiln-gateway ./gateway/cmd/kiln-gateway
	$(GO) build -o bin/kiln-scheduler ./scheduler/cmd/kiln-scheduler
	$(GO) build -o bin/kiln-agent ./agent/cmd/kiln-agent

.PHONY: run
run: dev-env build ## start kilnd on the local engine, build and push examples/hello through it, keep kilnd running
	@scripts/run.sh

.PHONY: frontend-image
frontend-image: dev-env ## build BuildKit's Dockerfile frontend from source and push it to the local registry (heredocs on Docker 20.10)
	@scripts/frontend-image.sh >/dev/null

.PHONY: buildkitd
buildkitd: ## build the pinned standalone BuildKit (buildkitd + buildctl v0.34.2, scripts/tools/buildkit) into the dev cache; scripts/buildkitd.sh starts rootful or rootless daemons
	@scripts/buildkitd.sh build >/dev/null

.PHONY: images
images: dev-env build ## build kiln's images FROM scratch with kiln itself and push them to 127.0.0.1:5000/kiln/ (deploy/docker)
	@scripts/images.sh

.PHONY: cluster
cluster: dev-env build ## run a local distributed farm: 3 NATS nodes (R3), 2 gateways, 2 schedulers, 3 agents each on its own dockerd (deploy/local/cluster.sh; Ctrl-C stops it)
	@deploy/local/cluster.sh --nats 3 --gateways 2 --schedulers 2 --agents 3

.PHONY: test
test: dev-env frontend-image buildkitd ## run every module's tests against a real engine, registry and NATS
	@scripts/test.sh

CERTS_DIR ?= certs

.PHONY: chaos
chaos: dev-env frontend-image ## the chaos test alone (make test runs it too): 300 builds on a local R3 cluster while a monkey kills a NATS node, an agent, a gateway and the scheduler leader
	$(GO) test -count=1 -timeout 20m -v -run TestChaos ./tests

.PHONY: certs
certs: ## make a local CA, a gateway certificate for 127.0.0.1/localhost and a client certificate in $(CERTS_DIR)/ (for trying TLS; CERTS_HOSTS=ip,name,… sets the gateway's names)
	$(GO) run ./scripts/certs -dir $(CERTS_DIR) $(if $(CERTS_HOSTS),-hosts $(CERTS_HOSTS))

.PHONY: bench
bench: dev-env build buildkitd ## run the benchmarks in bench/ (tables and JSON in bench/results/)
	$(GO) run ./bench/warmrebuild
	$(GO) run ./bench/cimodes
	$(GO) run ./bench/contextupload
	$(GO) run ./bench/smallfiles
	$(GO) run ./bench/engines
	$(GO) run ./bench/coldagent
	$(GO) run ./bench/multiplatform -bin bin
	$(GO) run ./bench/routingsim
	$(GO) run ./bench/affinity
	$(GO) run ./bench/dispatch
	$(GO) run ./bench/dispatch -fresh-contexts -out bench/results/dispatch-fresh.json
	$(GO) run ./bench/dispatch -cluster -agents 50 -slots 8
	$(GO) run ./bench/scale
	$(GO) run ./bench/tracing

.PHONY: lint
lint: $(TOOLS)/buf ## gofmt, go vet and buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@set -e; for d in $(MODULES); do (cd $$d && $(GO) vet ./...); done
	$(TOOLS)/buf lint

.PHONY: gomod-check
gomod-check: ## every module builds on its own (GOWORK=off) with sibling replaces
	@set -e; for d in $(MODULES); do echo "== $$d"; (cd $$d && GOWORK=off $(GO) build ./...); done

.PHONY: proto
proto: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## regenerate proto/gen/go
	$(TOOLS)/buf generate

.PHONY: proto-check
proto-check: proto ## fail if generated code differs from what is committed
	@git diff --exit-code -- proto/gen || { echo "proto/gen is stale: run make proto and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- proto/gen)" || { git status --porcelain -- proto/gen; echo "proto/gen has untracked files: run make proto and commit"; exit 1; }

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: clean
clean: ## remove bin/
	rm -rf bin
