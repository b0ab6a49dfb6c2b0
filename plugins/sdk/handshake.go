package sdk

import (
	"github.com/hashicorp/go-plugin"
)

// Handshake is the go-plugin handshake between pmhub and a profiler plugin. The magic cookie
// only keeps a plugin binary from being run by hand by mistake (it then prints a hint and exits);
// it is not a security measure; the hub's sha256 allowlist is.
var Handshake = plugin.HandshakeConfig{
	MagicCookieKey:   "PROFILEMATE_PLUGIN",
	MagicCookieValue: "d3b6c1f0a7e94e2c9f51b8a6e0c4d7a2",
}

// Protocol versions of the plugin gRPC service (plugins/proto/profilemate/plugin/v1/plugin.proto).
// A binary serves every version in ProtocolVersions; the host asks for the ones it knows and
// go-plugin picks the highest both share. History:
//
//	1  first version: Describe, OpenSession, Consume, CloseSession, InputChanged.
//
// A change a peer of the previous version cannot ignore (see the compatibility rule in the .proto)
// adds the next version here and keeps serving the older one beside it for at least one release.
const ProtocolVersion = 1

// ProtocolVersions are the protocol versions this SDK serves and speaks.
var ProtocolVersions = []int{ProtocolVersion}

// PluginKey is the name of the profiler in go-plugin's plugin set.
const PluginKey = "profiler"

// PluginSets returns the versioned plugin sets for go-plugin's ServeConfig (impl set) or
// ClientConfig (impl nil).
func PluginSets(impl Profiler) map[int]plugin.PluginSet {
	out := map[int]plugin.PluginSet{}
	for _, v := range ProtocolVersions {
		out[v] = plugin.PluginSet{PluginKey: &GRPCPlugin{Impl: impl}}
	}
	return out
}

// Serve runs p as a plugin until the host stops it. It is meant to be the whole of a plugin's
// main; it does not return while the host is connected. Run by hand (without the host's magic
// cookie) it prints a short hint and exits with status 1.
func Serve(p Profiler) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(p),
		GRPCServer:       plugin.DefaultGRPCServer,
	})
}
