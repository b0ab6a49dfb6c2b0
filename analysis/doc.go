// Package analysis turns a session's rows into answers: which rank straggles, how unbalanced the
// MoE experts are, how much KV cache would have avoided the preemptions, which CUDA-graph capture
// sizes are missing. It is the library behind the in-tree profiler plugins (plugins/straggler,
// plugins/moe_balance, plugins/kv_pressure, plugins/cudagraph_coverage) and the report, so a
// session recorded without plugins gets the same numbers.
//
// Input is a Source: the rows of the tables of proto/tables (column name → CSV cell text) and
// the session's processes. OpenDir reads a session folder, hub (`<data>/sessions/<id>/`) or
// standalone shim (`session_<id>/<role>-<rank>-<pid>/`); Tables holds rows in memory (a plugin
// adds the events of its batches to one).
//
// Output is a Result per analysis: derived tables (Table: name, proto.Column schema, rows of cell
// texts) and Findings, rows of the common findings table (FindingsColumns): plugin, severity,
// title, the numbers behind it (name, value, unit), ranks, hosts and the steps concerned.
//
//	src, err := analysis.OpenDir("/var/lib/profilemate/sessions/20261130_050342_d4e44a")
//	results, err := analysis.RunAll(src)
//	for _, r := range results { for _, f := range r.Findings { fmt.Println(f) } }
//
// Each analysis is also callable alone with options (Straggler, MoEBalance, KVPressure,
// CUDAGraphCoverage) and has a typed summary for callers that want figures, not rows
// (MoELayers, KVSummaries, CUDAGraphSummaries). docs/analysis.md describes every number.
package analysis
