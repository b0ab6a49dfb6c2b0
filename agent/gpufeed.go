package agent

import (
	"context"
	"encoding/json"
	"os"

	"github.com/profilemate/profilemate/agent/gpu"
	pmproto "github.com/profilemate/profilemate/proto"
)

// StartGPU samples the host's GPUs through NVML for as long as ctx lives and publishes each round
// to every open session as gpu_metrics events of the agent itself (process token "agent"). Without
// an NVIDIA driver it logs one line and everything else keeps running.
func (a *Agent) StartGPU(ctx context.Context, cfg gpu.Config) *gpu.Sampler {
	cfg.Resolve = gpu.Resolver{ByPID: a.procByPID, ByUUID: a.procByUUID}
	cfg.Emit = a.publishGPU
	if cfg.Log == nil {
		cfg.Log = a.log
	}
	s := gpu.New(cfg)
	RegisterStatus(func(st *Status) {
		if st.Extra == nil {
			st.Extra = map[string]any{}
		}
		st.Extra["gpus"] = s.GPUs()
		if s.On() {
			st.Extra["gpu_sampling"] = "on"
		} else {
			st.Extra["gpu_sampling"] = "off (no NVIDIA driver or library)"
		}
	})
	go s.Run(ctx)
	return s
}

func (a *Agent) procByPID(pid int) (gpu.Proc, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.procs[pid]
	if !ok {
		return gpu.Proc{}, false
	}
	return gpuProc(p), true
}

func (a *Agent) procByUUID(uuid string) (gpu.Proc, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.procs {
		if p.hello != nil && p.hello.GPUUUID == uuid && p.ident.Role == "worker" {
			return gpuProc(p), true
		}
	}
	return gpu.Proc{}, false
}

func gpuProc(p *proc) gpu.Proc {
	return gpu.Proc{Session: p.sess.id, Pid: p.pid, Role: p.ident.Role, DP: p.ident.DP, PP: p.ident.PP,
		TP: p.ident.TP, EP: p.ident.EP, Rank: p.ident.Rank}
}

// publishGPU sends one sampling round to every session that is still open.
func (a *Agent) publishGPU(rows []gpu.Row) {
	if len(rows) == 0 {
		return
	}
	evs := make([]pmproto.Event, 0, len(rows))
	for _, r := range rows {
		cols, err := json.Marshal(r.Cols)
		if err != nil {
			a.encErrors.Add(1)
			continue
		}
		evs = append(evs, pmproto.Event{Kind: gpu.Kind, Table: gpu.Table, Seq: uint64(r.Seq), Step: -1, TsNS: r.TsNS, Cols: cols})
	}
	a.mu.Lock()
	var open []string
	for id, s := range a.sessions {
		if !s.ended {
			open = append(open, id)
		}
	}
	a.mu.Unlock()
	for _, id := range open {
		head := BatchHead{Session: id, Host: a.cfg.Host, Proc: pmproto.ProcAgent, PID: os.Getpid(),
			Ident: pmproto.Ident{Role: pmproto.RoleAgent, DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}}
		msgs, err := a.encodeEvents(&head, evs)
		if err != nil {
			a.encErrors.Add(1)
			a.log.Warn("gpu rows not encoded", "err", err)
			continue
		}
		for _, m := range msgs {
			a.q.push(m)
		}
	}
}
