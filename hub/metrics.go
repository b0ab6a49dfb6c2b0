package hub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/profilemate/profilemate/proto"
)

// Metrics is the hub's Prometheus view: its own health and the latest per-rank series users chart,
// labelled by session, host, process token (proc: w3, eng0, api0), global worker rank (rank,
// empty for engine and API-server processes), multi-node instance key (instance_key, e.g.
// "mp:10.0.0.1:29500"; not "instance", Prometheus's own label for the scraped target) and the
// host's node rank in it (node_rank), both empty for a single-host instance. instance_key and
// node_rank follow from session and host, so they add no series. Active
// sessions only: series of a session that ended are deleted at the next scrape, which bounds
// cardinality.
type Metrics struct {
	reg *prometheus.Registry
	srv *Server

	kvUsage    *prometheus.GaugeVec
	tokenUtil  *prometheus.GaugeVec
	graphSteps *prometheus.CounterVec
	preempts   *prometheus.CounterVec
	stepWall   *prometheus.HistogramVec
	gpuUtil    *prometheus.GaugeVec
	gpuMem     *prometheus.GaugeVec

	mu   sync.Mutex
	cols map[string]map[string]int // table -> column -> index in Event.Cols
	live map[string]uint64         // sessions with series -> obs at their latest batch
	obs  uint64                    // batches observed so far
}

var rankLabels = []string{"session", "instance_key", "host", "node_rank", "proc", "rank"}

// NewMetrics makes the registry; pass m.Observe as Config.Observe and call Attach once the server
// exists.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		kvUsage: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "profilemate_kv_cache_usage_ratio",
			Help: "KV cache usage at the engine's latest scheduler step (0..1)"}, rankLabels),
		tokenUtil: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "profilemate_batch_token_utilization_ratio",
			Help: "scheduled tokens / token budget at the engine's latest step (0..1); absent while the budget is unknown"}, rankLabels),
		graphSteps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "profilemate_steps_total",
			Help: "model-runner steps per CUDA graph runtime mode (NONE, PIECEWISE, FULL)"}, append(rankLabels, "mode")),
		preempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "profilemate_preemptions_total",
			Help: "requests preempted by the scheduler"}, rankLabels),
		stepWall: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "profilemate_step_wall_seconds",
			Help:    "wall-clock time of a model-runner step on the host (execute_model, perf_counter; not CPU time)",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, rankLabels),
		gpuUtil: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "profilemate_gpu_utilization_ratio",
			Help: "GPU utilisation from NVML (0..1; NVML's percent / 100)"}, []string{"session", "host", "gpu"}),
		gpuMem: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "profilemate_gpu_memory_used_bytes",
			Help: "GPU memory used from NVML"}, []string{"session", "host", "gpu"}),
		cols: map[string]map[string]int{},
		live: map[string]uint64{},
	}
	m.reg.MustRegister(m.kvUsage, m.tokenUtil, m.graphSteps, m.preempts, m.stepWall, m.gpuUtil, m.gpuMem)
	// A column the contract lacks stays unbound (its series stays empty); TestMetricColumnsBind
	// fails on it first.
	m.cols, _ = bindColumns(proto.OwnIndex)
	return m
}

// metricColumns are the tables' own columns the series read, by table.
var metricColumns = map[string][]string{
	"kv_cache_usage":      {"usage"},
	"batch_utilization":   {"token_util"},
	"cuda_graph_usage":    {"runtime_mode"},
	"forward_pass_timing": {"cpu_ms"},
	"gpu_metrics":         {"gpu_index", "util_gpu", "mem_used_bytes"},
}

// bindColumns binds every column of metricColumns by name with own (proto.OwnIndex: the index
// among a table's own columns, the Event.Cols order): table -> column -> index. It returns every
// column it could bind and an error naming each one it could not.
func bindColumns(own func(table, column string) (int, error)) (map[string]map[string]int, error) {
	cols := map[string]map[string]int{}
	var errs []error
	for table, names := range metricColumns {
		cols[table] = map[string]int{}
		for _, name := range names {
			i, err := own(table, name)
			if err != nil {
				errs = append(errs, fmt.Errorf("metrics column %s.%s: %w", table, name, err))
				continue
			}
			cols[table][name] = i
		}
	}
	return cols, errors.Join(errs...)
}

// Attach adds the hub's health series, read from s at each scrape.
func (m *Metrics) Attach(s *Server) {
	m.srv = s
	counter := func(name, help string, f func(Counters) int64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(s.Counters())) }))
	}
	counter("profilemate_hub_messages_total", "stream messages handled", func(c Counters) int64 { return c.Messages })
	counter("profilemate_hub_rows_total", "CSV rows written", func(c Counters) int64 { return c.Rows })
	counter("profilemate_hub_duplicates_total", "events that arrived again and were written once", func(c Counters) int64 { return c.Duplicates })
	counter("profilemate_hub_dropped_by_cap_total", "rows beyond a session's size cap", func(c Counters) int64 { return c.DroppedByCap })
	counter("profilemate_hub_dead_lettered_total", "messages set aside in the dead-letter folder (a newer wire major, or events the contract refused)", func(c Counters) int64 { return c.DeadLettered })
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "profilemate_hub_sessions",
		Help: "sessions open in memory"}, func() float64 { return float64(s.Counters().Sessions) }))
	m.reg.MustRegister(&lagCollector{s: s,
		pending: prometheus.NewDesc("profilemate_hub_consumer_pending_messages",
			"stream messages the hub's durable consumer has not been delivered yet (consumer lag)", nil, nil),
		ackPending: prometheus.NewDesc("profilemate_hub_consumer_ack_pending_messages",
			"messages delivered to the hub and not yet acknowledged", nil, nil)})
	m.reg.MustRegister(&badCollector{s: s, desc: prometheus.NewDesc("profilemate_hub_bad_messages_total",
		"messages skipped, by reason", []string{"reason"}, nil)})
	m.attachShared(s)
}

// Observe feeds one written batch into the per-rank series.
func (m *Metrics) Observe(b *Batch) {
	m.mu.Lock()
	m.obs++
	m.live[b.Session] = m.obs
	m.mu.Unlock()
	rank := rankOf(b.Proc)
	for i := range b.Events {
		ev := &b.Events[i]
		col := func(name string) (string, bool) {
			j, ok := m.cols[ev.Table][name]
			if !ok || j >= len(ev.Cols) {
				return "", false
			}
			return ev.Cols[j], true
		}
		num := func(name string) (float64, bool) {
			v, ok := col(name)
			if !ok {
				return 0, false
			}
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
		l := prometheus.Labels{"session": b.Session, "instance_key": b.InstanceKey, "host": b.Host, "node_rank": b.NodeRank, "proc": b.Proc, "rank": rank}
		switch ev.Table {
		case "kv_cache_usage":
			if v, ok := num("usage"); ok {
				m.kvUsage.With(l).Set(v)
			}
		case "batch_utilization":
			// An empty cell is an unknown budget: the gauge then does not exist (never a 0).
			if v, ok := num("token_util"); ok {
				m.tokenUtil.With(l).Set(v)
			} else {
				m.tokenUtil.Delete(l)
			}
		case "cuda_graph_usage":
			if mode, ok := col("runtime_mode"); ok {
				m.graphSteps.WithLabelValues(b.Session, b.InstanceKey, b.Host, b.NodeRank, b.Proc, rank, mode).Inc()
			}
		case "preemption_events":
			m.preempts.With(l).Inc()
		case "forward_pass_timing":
			if v, ok := num("cpu_ms"); ok {
				m.stepWall.With(l).Observe(v / 1000)
			}
		case "gpu_metrics":
			gpu, _ := col("gpu_index")
			gl := prometheus.Labels{"session": b.Session, "host": b.Host, "gpu": gpu}
			if v, ok := num("util_gpu"); ok {
				m.gpuUtil.With(gl).Set(v / 100)
			}
			if v, ok := num("mem_used_bytes"); ok {
				m.gpuMem.With(gl).Set(v)
			}
		}
	}
}

// Handler serves /metrics; before each scrape it drops the series of sessions that ended.
func (m *Metrics) Handler() http.Handler {
	inner := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.prune()
		inner.ServeHTTP(w, r)
	})
}

func (m *Metrics) prune() {
	if m.srv == nil {
		return
	}
	// Only sessions last observed before the listing below may be pruned: a batch of a new session
	// can be observed while the listing runs (before its folder existed), and its series must stay.
	m.mu.Lock()
	before := m.obs
	m.mu.Unlock()
	active := map[string]bool{}
	for _, s := range m.srv.Sessions() {
		if s.Status == StatusActive {
			active[s.Session] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, seen := range m.live {
		if active[id] || seen > before {
			continue
		}
		l := prometheus.Labels{"session": id}
		m.kvUsage.DeletePartialMatch(l)
		m.tokenUtil.DeletePartialMatch(l)
		m.graphSteps.DeletePartialMatch(l)
		m.preempts.DeletePartialMatch(l)
		m.stepWall.DeletePartialMatch(l)
		m.gpuUtil.DeletePartialMatch(l)
		m.gpuMem.DeletePartialMatch(l)
		delete(m.live, id)
	}
}

// rankOf is the global worker rank a process token names ("w3" -> "3"); other roles have none, so
// the label stays empty and the series is told apart by proc.
func rankOf(proc string) string {
	if role, n, err := proto.ParseProcToken(proc); err == nil && role == proto.RoleWorker {
		return strconv.Itoa(n)
	}
	return ""
}

// lagCollector asks the stream for the hub consumer's backlog at each scrape; without an answer
// (consumer not yet created, NATS unreachable) the series is left out rather than reported as 0.
type lagCollector struct {
	s                   *Server
	pending, ackPending *prometheus.Desc
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.pending; ch <- c.ackPending }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	cons := c.s.ing.consumer()
	if cons == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending))
	ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(info.NumAckPending))
}

// badCollector exports the hub's bad-input counters, one series per reason.
type badCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func (c *badCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *badCollector) Collect(ch chan<- prometheus.Metric) {
	for reason, n := range c.s.Counters().Bad {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), reason)
	}
}
