//go:build tools

// Package deps pins the module's dependencies until the packages that use them land.
package deps

import (
	_ "github.com/NVIDIA/go-nvml/pkg/nvml"
	_ "github.com/hashicorp/go-plugin"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/urfave/cli/v2"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
)
