package proto

import (
	"strings"
	"testing"
)

// TestNodeRank: the node of its instance a `vllm serve` command line starts, for the shapes of
// docs/multinode.md; -1 for a command line that starts no multi-node instance.
func TestNodeRank(t *testing.T) {
	for argv, want := range map[string]int{
		"vllm serve m -tp 4 --nnodes 2 --node-rank 0 --master-port 29600":                                                                         0,
		"vllm serve m -tp 4 --nnodes 2 --node-rank 1 --master-port 29600 --headless":                                                              1,
		"vllm serve m -tp 4 --nnodes 2 --master-port 29600":                                                                                       0,
		"vllm serve m --data-parallel-size 4 --data-parallel-size-local 2 --data-parallel-rpc-port 13400":                                         0,
		"vllm serve m --data-parallel-size 4 --data-parallel-size-local 2 --data-parallel-start-rank 2 --data-parallel-rpc-port 13400 --headless": 1,
		"vllm serve m -tp 4":        -1,
		"-c --multiprocessing-fork": -1,
	} {
		if got := NodeRank(strings.Fields(argv)); got != want {
			t.Errorf("NodeRank(%s) = %d, want %d", argv, got, want)
		}
	}
}
