package proto

import (
	"strconv"
	"strings"
)

// Defaults of vLLM's rendezvous flags (vllm/config/parallel.py: master_port 29501,
// data_parallel_rpc_port 13345; master_addr and data_parallel_address 127.0.0.1).
const (
	defaultMasterAddr = "127.0.0.1"
	defaultMasterPort = "29501"
	defaultDPRPCPort  = "13345"
)

// serveFlags reads a `vllm serve` command line into flag name (dashes, no leading "--") -> value
// ("true" for --headless); serve reports whether the command is `… serve …`.
func serveFlags(argv []string) (flags map[string]string, serve bool) {
	flags = map[string]string{}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "serve" {
			serve = true
			continue
		}
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		name = strings.ReplaceAll(name, "_", "-")
		if !hasVal {
			if name == "headless" {
				val = "true"
			} else if i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "-") {
				val = argv[i+1]
				i++
			}
		}
		flags[name] = val
	}
	return flags, serve
}

// InstanceKey returns what every process of one multi-node vLLM instance shares, read from the
// command line of the process that starts it on a host (`vllm serve …` on the head and on each
// follower):
//   - multi-node MP (`--nnodes N` with N > 1): "mp:<master addr>:<master port>";
//   - multi-node DP (`--headless`, or `--data-parallel-size-local` below `--data-parallel-size`):
//     "dp:<data-parallel address>:<data-parallel RPC port>".
//
// Unset addresses and ports take vLLM's defaults. "" when argv starts no multi-node instance
// (spawned children carry spawn's argv: they belong to their parent's instance). Ray instances
// have no key on the command line: the shim sets PROFILEMATE_INSTANCE_KEY=ray:<session>.
func InstanceKey(argv []string) string {
	key, _ := instanceOf(argv)
	return key
}

// NodeRank returns the node of its multi-node instance that argv (a `vllm serve …` command line
// with an InstanceKey) starts: --node-rank for multi-node MP (0 when left out), and for multi-node
// DP --data-parallel-start-rank / --data-parallel-size-local (0 on the head, which has no start
// rank). -1 when argv starts no multi-node instance.
func NodeRank(argv []string) int {
	_, n := instanceOf(argv)
	return n
}

func instanceOf(argv []string) (string, int) {
	flags, serve := serveFlags(argv)
	if !serve && flags["nnodes"] == "" && flags["data-parallel-address"] == "" {
		return "", -1
	}
	or := func(name, def string) string {
		if v := flags[name]; v != "" {
			return v
		}
		return def
	}
	num := func(name string) int {
		n, err := strconv.Atoi(flags[name])
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
	if n, err := strconv.Atoi(flags["nnodes"]); err == nil && n > 1 {
		return "mp:" + or("master-addr", defaultMasterAddr) + ":" + or("master-port", defaultMasterPort), num("node-rank")
	}
	size, _ := strconv.Atoi(flags["data-parallel-size"])
	local, errLocal := strconv.Atoi(flags["data-parallel-size-local"])
	if flags["headless"] == "true" || (errLocal == nil && size > local) {
		node := 0
		if start := num("data-parallel-start-rank"); start > 0 && errLocal == nil && local > 0 {
			node = start / local
		}
		return "dp:" + or("data-parallel-address", defaultMasterAddr) + ":" + or("data-parallel-rpc-port", defaultDPRPCPort), node
	}
	return "", -1
}
