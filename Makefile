# ProfileMate: one entry point for set-up, build, tests and the demo.
export CGO_CFLAGS := -Wno-deprecated-declarations
LDFLAGS := -ldflags=-extldflags=-Wl,-z,lazy

.PHONY: setup build test demo bench proto fuzz

setup:
	./scripts/setup.sh

build:
	mkdir -p bin
	go build $(LDFLAGS) -o bin/ ./cmd/...

test:
	go test -p 1 -timeout 40m $(LDFLAGS) ./...

demo: build
	./bin/pmhub demo

proto:
	./proto/generate.sh

# Fuzz targets run by `make fuzz` (and CI), each for FUZZTIME: package:Target, one per line.
FUZZTIME ?= 20s
FUZZ_TARGETS := \
	./hub/:FuzzDecode \
	./proto/:FuzzDecodeLine \
	./proto/:FuzzShimCodec \
	./proto/:FuzzLineReader \
	./agent/:FuzzSocketLines

fuzz:
	set -e; for t in $(FUZZ_TARGETS); do \
		go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}"; \
	done

# The end-to-end pipeline benchmark (real binaries, every row checked); scripts/benchmarks.sh
# runs the others by name and compares revisions (docs/BENCHMARKS.md).
bench:
	scripts/benchmarks.sh pipeline
