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

fuzz:
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 20s ./hub/
	go test -run '^$$' -fuzz '^FuzzSocketLines$$' -fuzztime 20s ./agent/
