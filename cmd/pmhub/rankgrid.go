package main

import "github.com/profilemate/profilemate/hub"

// RankGrid is hub.RankGrid: a session's workers laid out as one vLLM instance (docs/multinode.md).
type RankGrid = hub.RankGrid

// rankGrid lays out procs' workers (hub.NewRankGrid); nil without workers and TP x PP above 1.
func rankGrid(procs []*hub.ProcMeta) *RankGrid { return hub.NewRankGrid(procs) }
