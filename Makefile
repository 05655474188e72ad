# Nexstor build and test entry points. `make test` is what CI runs.
GO        ?= go
GOFLAGS   ?=
PROTOC    ?= protoc
BIN       := bin
PROTOS    := $(shell find api -name '*.proto' 2>/dev/null)
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
ALLOC_PKGS := ./internal/bdev/... ./internal/iobuf ./internal/nbd ./internal/nexus ./internal/nvmf/... ./internal/pool ./internal/sockread

.PHONY: all build install image test test-deps test-short vet generate bench bench-nbd bench-heal bench-footprint bench-failover bench-pvc bench-ceph chaos soak fuzz sim clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# install puts nexstor and nexctl in $(go env GOBIN), else $(go env GOPATH)/bin.
install:
	CGO_ENABLED=0 $(GO) install ./cmd/...

# image builds the container images of the Helm chart with docker:
# $(IMAGE) (nexstor and nexctl, distroless) and $(IMAGE)-csi-node (with the
# file system tools of the CSI node plugin).
IMAGE ?= nexstor/nexstor
TAG   ?= 0.1.0
image:
	docker build -t $(IMAGE):$(TAG) .
	docker build -t $(IMAGE)-csi-node:$(TAG) --target csi-node .

# test installs the real peers (when it can), then runs every test with the
# race detector. Under CI a missing peer fails its test instead of skipping.
# The race detector makes sync.Pool drop items, so the tests that prove the
# I/O paths do not allocate run once more without it.
test: test-deps vet
	$(GO) test -race -timeout 45m ./...
	$(GO) test -count=1 -run 'NoAllocations|DoesNotAllocate' $(ALLOC_PKGS)

test-short: vet
	$(GO) test -short ./...

test-deps:
	./scripts/install-test-deps.sh

vet:
	$(GO) vet ./...

# generate regenerates the committed protobuf code.
generate:
	@command -v $(PROTOC) >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	PATH="$(GOBIN_DIR):$$PATH" $(PROTOC) -I api --go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative $(patsubst api/%,%,$(PROTOS))

# fuzz runs each fuzz target for a short while (FUZZTIME, default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# sim is a soak of the reconciler simulation (internal/mgmt/reconcile_sim_test.go):
# SIM_SEEDS random seeds of SIM_STEPS steps each, without the race detector
# (about 6 s a seed of 1000 steps; the defaults take some 20 minutes). A
# failing seed is printed; replay it with NEXSTOR_SIM_SEED=<seed>
# NEXSTOR_SIM_STEPS=<steps> NEXSTOR_SIM_TRACE=1 go test -run
# TestReconcilerSimulation ./internal/mgmt/. Not part of make test.
SIM_SEEDS ?= 200
SIM_STEPS ?= 1000
sim:
	NEXSTOR_SIM_SEEDS=$(SIM_SEEDS) NEXSTOR_SIM_STEPS=$(SIM_STEPS) \
		$(GO) test -count=1 -timeout 0 -run '^TestReconcilerSimulation$$' ./internal/mgmt/

# bench runs every benchmark comparison: bench/all.sh runs the suites of
# bench/ one after another (each interleaved in rounds against its
# baseline; about 1 h 20 min in all), prints their reports and a summary,
# and regenerates the generated sections of bench/RESULTS*.md from them
# (the summary in bench/RESULTS.md). BENCHFLAGS passes options, e.g.
# BENCHFLAGS='-s nbd,qd1' for some suites, '-q' for a quick run that checks
# the driver (see bench/all.sh -h). The soaks are apart: make soak, make
# chaos. Not part of make test.
BENCHFLAGS ?=
bench:
	./bench/all.sh $(BENCHFLAGS)

# bench-nbd runs bench/nbd.sh alone: Nexstor over NBD against nbdkit and
# fio on the raw file (about 16 minutes; NBDFLAGS passes options, see
# bench/nbd.sh -h). Markdown on stdout; no results file is touched.
NBDFLAGS ?=
bench-nbd:
	./bench/nbd.sh $(NBDFLAGS)

# bench-heal times self-healing on a 4-node loopback system: a lost
# replica replaced and rebuilt, a returning one resynced (about 6 minutes;
# HEALFLAGS passes options, see bench/heal.sh -h). Markdown on stdout.
HEALFLAGS ?=
bench-heal:
	./bench/heal.sh $(HEALFLAGS)

# bench-footprint measures the resident memory and idle CPU of a server
# holding 1,000 NVMe/TCP-shared replicas (about 5 minutes; FOOTPRINTFLAGS
# passes options, see bench/footprint.sh -h).
FOOTPRINTFLAGS ?=
bench-footprint:
	./bench/footprint.sh $(FOOTPRINTFLAGS)

# bench-failover times the longest write stall of a planned move and of a
# killed nexus node, with the Linux kernel in a QEMU guest as the host
# (about 2 minutes; FAILOVERFLAGS passes options, see bench/failover.sh -h).
FAILOVERFLAGS ?=
bench-failover:
	./bench/failover.sh $(FAILOVERFLAGS)

# bench-pvc times PVC to staged (CreateVolume, ControllerPublishVolume,
# NodeStageVolume with mkfs in a QEMU guest) for a 3-replica volume against
# a raw connect + mkfs + mount (about 2 minutes for 10 rounds; PVCFLAGS
# passes options, see bench/pvc.sh -h).
PVCFLAGS ?=
bench-pvc:
	./bench/pvc.sh $(PVCFLAGS)

# bench-ceph runs Nexstor side by side with Ceph RBD (16.2, Debian's
# packages, installed with apt-get when missing; as root) on the same disk
# through the same fio: 3 and 1 replicas, writes as they are and with
# fsync=1 (about 20 minutes; CEPHFLAGS passes options, see bench/ceph.sh -h).
# Markdown on stdout.
CEPHFLAGS ?=
bench-ceph:
	./bench/ceph.sh $(CEPHFLAGS)

# chaos runs TestChaos as a soak: five nodes in network namespaces, fio
# over NBD and in a QEMU guest over NVMe/TCP, random kills and partitions
# for CHAOS_DURATION (needs root). CHAOS_SEED repeats a printed schedule.
CHAOS_DURATION ?= 30m
CHAOS_SEED ?=
chaos: test-deps
	NEXSTOR_CHAOS_DURATION=$(CHAOS_DURATION) NEXSTOR_CHAOS_SEED=$(CHAOS_SEED) \
		$(GO) test -race -count=1 -v -run '^TestChaos$$' -timeout 0 ./test/system

# soak runs bench/soak.sh: a server with a uring:// pool, replicas shared over
# NBD and NVMe/TCP under mixed verified I/O (soakio's log of acknowledged
# writes, fio verify=crc32c), kill -9 of the server at random moments, the
# pool checked and every acknowledged write verified after each restart,
# for SOAK_DURATION (default 1h). SOAK_SEED repeats a printed run. Not part
# of make test.
SOAK_DURATION ?= 1h
SOAK_SEED ?=
soak:
	SOAK_DURATION=$(SOAK_DURATION) SOAK_SEED=$(SOAK_SEED) ./bench/soak.sh

clean:
	rm -rf $(BIN)
