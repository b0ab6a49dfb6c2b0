"""Table schemas: the common columns and each table's own columns, in file order.

Read from `_tables.json` beside this file (generated from proto/tables/*.json); in a source
checkout without it, from ../../proto/tables; else only the common columns are known.
"""
import json
import os
import re

COMMON_FALLBACK = ["session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"]

_cache = {}


def _load():
    if "tables" in _cache:
        return _cache
    here = os.path.dirname(os.path.abspath(__file__))
    common, tables, names, kinds, types = list(COMMON_FALLBACK), {}, {}, [], {}
    try:
        with open(os.path.join(here, "_tables.json")) as f:
            doc = json.load(f)
        common = [c["name"] for c in doc["common"]]
        tables = {t: [c["name"] for c in v["columns"]] for t, v in doc["tables"].items()}
        types = {t: {c["name"]: c.get("type", "") for c in v["columns"]} for t, v in doc["tables"].items()}
        names = dict(doc.get("names") or {})
        kinds = [(k["kind"], k["by"], list(doc["kinds"].get(k["kind"], []))) for k in doc["kind_list"]]
        _cache["source"] = "_tables.json"
    except (OSError, ValueError, KeyError):
        folder = os.path.join(here, "..", "..", "proto", "tables")
        table_kinds = []
        try:
            for fn in sorted(os.listdir(folder)):
                if not fn.endswith(".json"):
                    continue
                with open(os.path.join(folder, fn)) as f:
                    doc = json.load(f)
                if fn == "kinds.json":
                    kinds = [(k["kind"], k["by"], []) for k in doc["kinds"]]
                    continue
                cols = [c["name"] for c in doc["columns"]]
                if doc.get("table") == "common":
                    common = cols
                else:
                    tables[doc["table"]] = cols
                    types[doc["table"]] = {c["name"]: c.get("type", "") for c in doc["columns"]}
                    table_kinds.append((doc["table"], doc.get("kind")))
            for k in kinds:
                k[2].extend(t for t, kind in table_kinds if kind == k[0])
            _cache["source"] = folder
        except (OSError, ValueError, KeyError):
            _cache["source"] = "fallback"
    _cache["common"], _cache["tables"], _cache["names"], _cache["kinds"] = common, tables, names, kinds
    _cache["types"] = types
    return _cache


def _shim_kinds():
    try:
        return {k: list(t) for k, by, t in _load()["kinds"] if by == "shim"}
    except Exception:  # never raise into the host process: no kinds means nothing recorded
        return {}


# The kinds the shim records and their tables, from proto/tables/kinds.json via _tables.json (the
# agent samples gpu itself); STANDALONE_TABLES are the CSV files a standalone session writes.
KIND_TABLES = _shim_kinds()
KINDS = sorted(KIND_TABLES)
STANDALONE_TABLES = [t for k in KIND_TABLES for t in KIND_TABLES[k]]


def kind_tables(kind):
    """The tables a shim kind feeds, in file order (empty for an unknown kind)."""
    return list(KIND_TABLES.get(kind, []))


def common_columns():
    return list(_load()["common"])


def table_columns(table):
    """The table's own columns (empty when the schema is unknown)."""
    return list(_load()["tables"].get(table, []))


def column_types(table):
    """{column: type} of the table's own columns, type one of "int", "float", "string", "bool"
    (proto/tables/<table>.json); empty when the table or the schema is unknown."""
    return dict(_load()["types"].get(table, {}))


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
