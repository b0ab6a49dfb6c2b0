"""Table schemas: the common columns and each table's own columns, in file order.

Read from `_tables.json` beside this file (generated from proto/tables/*.json); in a source
checkout without it, from ../../proto/tables; else only the common columns are known.
"""
import json
import os
import re

COMMON_FALLBACK = ["session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"]

# The eleven seed CSV files; gpu_metrics is written by the agent only.
STANDALONE_TABLES = [
    "cuda_graph_captures", "cuda_graph_usage", "kv_cache_usage", "kv_cache_evictions",
    "moe_expert_selection", "moe_expert_timing", "forward_pass_timing", "cpu_operations_timing",
    "batch_utilization", "preemption_events", "encoder_decoder_timing",
]

KIND_TABLES = {
    "cuda_graph": ["cuda_graph_captures", "cuda_graph_usage"],
    "kv_cache": ["kv_cache_usage", "kv_cache_evictions"],
    "moe_expert": ["moe_expert_selection", "moe_expert_timing"],
    "forward_pass": ["forward_pass_timing"],
    "cpu_timing": ["cpu_operations_timing"],
    "batch_util": ["batch_utilization"],
    "preemption": ["preemption_events"],
    "encoder_decoder": ["encoder_decoder_timing"],
}
KINDS = sorted(KIND_TABLES)

_cache = {}


def _load():
    if "tables" in _cache:
        return _cache
    here = os.path.dirname(os.path.abspath(__file__))
    common, tables, names = list(COMMON_FALLBACK), {}, {}
    try:
        with open(os.path.join(here, "_tables.json")) as f:
            doc = json.load(f)
        common = [c["name"] for c in doc["common"]]
        tables = {t: [c["name"] for c in v["columns"]] for t, v in doc["tables"].items()}
        names = dict(doc.get("names") or {})
        _cache["source"] = "_tables.json"
    except (OSError, ValueError, KeyError):
        folder = os.path.join(here, "..", "..", "proto", "tables")
        try:
            for fn in sorted(os.listdir(folder)):
                if not fn.endswith(".json"):
                    continue
                with open(os.path.join(folder, fn)) as f:
                    doc = json.load(f)
                names = [c["name"] for c in doc["columns"]]
                if doc.get("table") == "common":
                    common = names
                else:
                    tables[doc["table"]] = names
            _cache["source"] = folder
        except (OSError, ValueError, KeyError):
            _cache["source"] = "fallback"
    _cache["common"], _cache["tables"], _cache["names"] = common, tables, names
    return _cache


def common_columns():
    return list(_load()["common"])


def table_columns(table):
    """The table's own columns (empty when the schema is unknown)."""
    return list(_load()["tables"].get(table, []))


def header(table):
    """CSV header: common columns + the table's own columns, in file order."""
    return common_columns() + table_columns(table)


def table_kind(table):
    for kind, tables in KIND_TABLES.items():
        if table in tables:
            return kind
    return None


def name_error(what, name):
    """Checks a name against proto's grammar (proto/names.go, exported in _tables.json "names").

    what is "session", "host" or "kind"; name a str. Returns None when the name is valid, else
    a one-line reason naming the rule (never raises). Without the rules (no _tables.json) every
    non-empty str passes: the agent checks again.
    """
    if not isinstance(name, str) or not name:
        return "empty %s" % what
    rule = _load()["names"].get(what)
    if not rule:
        return None
    size = len(name.encode("utf-8", "replace"))
    if size > rule.get("max_len", size):
        return "%s of %d bytes: at most %d" % (what, size, rule["max_len"])
    try:
        ok = re.fullmatch(rule["pattern"], name) is not None
    except (re.error, KeyError, TypeError):
        return None
    if not ok:
        return "%s %r: only %s (at most %d bytes)" % (what, name[:40], rule.get("rule", rule["pattern"]),
                                                      rule.get("max_len", 0))
    return None
