"""The shim's side of the wire and file contract in proto/.

Checks that the shim's copy of the table schemas (profilemate/_tables.json) equals proto/tables,
that the golden batches in proto/testdata/batches are valid against those tables, and, once the
shim's modules exist, that profilemate.wire encodes each golden batch exactly, that
profilemate.schema gives every table's CSV header as common + own columns, and that every kind
the shim's targets record is a proto kind.

PROFILEMATE_PROTO_TABLES points the test at another copy of proto/tables (used by a Go test to
show that renaming a column there makes this suite fail).
"""
import glob
import importlib
import inspect
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
ROOT = os.path.dirname(SHIM)
PROTO_TABLES = os.environ.get("PROFILEMATE_PROTO_TABLES") or os.path.join(ROOT, "proto", "tables")
FIXTURES = os.path.join(ROOT, "proto", "testdata", "batches")
SHIM_TABLES = os.path.join(SHIM, "profilemate", "_tables.json")
TYPES = {"int", "float", "string", "bool"}

if SHIM not in sys.path:
    sys.path.insert(0, SHIM)


def load_proto_tables():
    """Reads proto/tables: (common columns, {table: schema}, {kind: [tables]})."""
    common, tables, kinds = None, {}, {}
    for path in sorted(glob.glob(os.path.join(PROTO_TABLES, "*.json"))):
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
        if "table" not in s:
            continue  # kinds.json: the list of kinds, checked through the tables' own kinds
        if s["table"] == "common":
            common = s["columns"]
            continue
        tables[s["table"]] = s
        kinds.setdefault(s["kind"], []).append(s["table"])
    return common, tables, kinds


def load_shim_tables():
    with open(SHIM_TABLES, encoding="utf-8") as f:
        return json.load(f)


def load_fixtures():
    out = {}
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


def strict_diff(a, b, where="$"):
    """First difference between two parsed JSON values, telling 1 from 1.0 from True; None if equal."""
    if type(a) is not type(b):
        return "%s: %r (%s) vs %r (%s)" % (where, a, type(a).__name__, b, type(b).__name__)
    if isinstance(a, dict):
        if set(a) != set(b):
            return "%s: keys %s vs %s" % (where, sorted(a), sorted(b))
        for k in a:
            d = strict_diff(a[k], b[k], where + "." + k)
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return "%s: %d items vs %d" % (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = strict_diff(x, y, "%s[%d]" % (where, i))
            if d:
                return d
        return None
    return None if a == b else "%s: %r vs %r" % (where, a, b)


def optional_module(name):
    """Imports a shim module, or None while it does not exist yet; a broken module still fails."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in (name, name.rsplit(".", 1)[0]):
            return None
        raise


def type_ok(typ, v):
    if typ == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if typ == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typ == "string":
        return isinstance(v, str)
    return isinstance(v, bool)


class TablesContract(unittest.TestCase):
    def setUp(self):
        self.common, self.tables, self.kinds = load_proto_tables()

    def test_proto_tables_well_formed(self):
        self.assertIsNotNone(self.common, "common.json missing in " + PROTO_TABLES)
        self.assertEqual([c["name"] for c in self.common],
                         ["session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"])
        self.assertEqual(len(self.tables), 12)
        for name, s in self.tables.items():
            names = [c["name"] for c in s["columns"]]
            self.assertEqual(len(names), len(set(names)), name)
            for c in s["columns"]:
                self.assertIn(c["type"], TYPES, "%s.%s" % (name, c["name"]))

    def test_shim_copy_equals_proto(self):
        shim = load_shim_tables()
        self.assertEqual(shim["common"], self.common,
                         "common columns differ: run go generate ./proto")
        self.assertEqual(sorted(shim["tables"]), sorted(self.tables),
                         "tables differ: run go generate ./proto")
        for name, s in self.tables.items():
            self.assertEqual(shim["tables"][name], s,
                             "%s differs between proto/tables and _tables.json: run go generate ./proto" % name)
        self.assertEqual(shim["kinds"], self.kinds)

    def test_fixtures_valid_against_tables(self):
        fixtures = load_fixtures()
        self.assertEqual(sorted(fixtures), sorted(self.kinds), "one golden batch per kind")
        for kind, batch in fixtures.items():
            self.assertEqual((batch["t"], batch["v"]), ("batch", 1), kind)
            seen = set()
            for i, ev in enumerate(batch["events"]):
                where = "%s event %d" % (kind, i)
                self.assertEqual(ev["kind"], kind, where)
                self.assertIn(ev["table"], self.kinds[kind], where)
                seen.add(ev["table"])
                cols = {c["name"]: c["type"] for c in self.tables[ev["table"]]["columns"]}
                for name, v in ev["cols"].items():
                    self.assertIn(name, cols, "%s: %s is not a column of %s" % (where, name, ev["table"]))
                    if v is not None:
                        self.assertTrue(type_ok(cols[name], v),
                                        "%s: %s=%r is not %s" % (where, name, v, cols[name]))
            self.assertEqual(seen, set(self.kinds[kind]), "%s fixture covers every table of its kind" % kind)


class ShimContract(unittest.TestCase):
    """Runs against the shim's own modules; each part skips only while its module is missing."""

    def setUp(self):
        self.common, self.tables, self.kinds = load_proto_tables()
        self.shim_kinds = sorted(k for k in self.kinds if k != "gpu")

    def test_encoder_reproduces_fixtures(self):
        wire = optional_module("profilemate.wire")
        if wire is None:
            self.skipTest("profilemate.wire not present yet: the encoder comparison runs once it exists")
        self.assertTrue(hasattr(wire, "encode_batch"), "profilemate.wire has no encode_batch")
        params = inspect.signature(wire.encode_batch).parameters
        for kind, batch in load_fixtures().items():
            if kind == "gpu":
                continue  # the agent samples GPUs; the shim never encodes them
            args = {"pid": batch["pid"], "ident": batch["ident"], "events": batch["events"],
                    "dropped": batch["dropped"]}
            missing = [p for p, d in params.items()
                       if d.default is inspect.Parameter.empty and d.kind in (d.POSITIONAL_OR_KEYWORD, d.KEYWORD_ONLY)
                       and p not in args]
            self.assertEqual(missing, [], "encode_batch(pid, ident, events, dropped) expected; it also requires %s" % missing)
            out = wire.encode_batch(**{k: v for k, v in args.items() if k in params or any(
                d.kind == d.VAR_KEYWORD for d in params.values())})
            if isinstance(out, (bytes, bytearray)):
                out = out.decode("utf-8")
            self.assertEqual(out.count("\n"), 1 if out.endswith("\n") else 0, "one line per batch")
            diff = strict_diff(json.loads(out), batch)
            self.assertIsNone(diff, "%s: shim encoding differs from the golden batch: %s" % (kind, diff))
            # The recorder's tuples (seq, step, ts_ns, kind, table, cols) take the flush thread's fast
            # path: it must write the same batch, twice (the second time with its per-table encoders made).
            tuples = [(e["seq"], e["step"], e["ts_ns"], e["kind"], e["table"], e["cols"]) for e in batch["events"]]
            for attempt in (1, 2):
                out = wire.encode_batch(batch["pid"], batch["ident"], tuples, batch["dropped"])
                diff = strict_diff(json.loads(out.decode("utf-8")), batch)
                self.assertIsNone(diff, "%s: fast encoding (pass %d) differs from the golden batch: %s" % (
                    kind, attempt, diff))

    def test_schema_headers(self):
        schema = optional_module("profilemate.schema")
        if schema is None:
            self.skipTest("profilemate.schema not present yet: the header check runs once it exists")
        header = getattr(schema, "header", None) or getattr(schema, "csv_header", None)
        self.assertTrue(callable(header), "profilemate.schema has no header(table)")
        common = [c["name"] for c in self.common]
        for name, s in self.tables.items():
            self.assertEqual(list(header(name)), common + [c["name"] for c in s["columns"]], name)

    def test_schema_kinds(self):
        schema = optional_module("profilemate.schema")
        if schema is None:
            self.skipTest("profilemate.schema not present yet: the kinds check runs once it exists")
        kt = getattr(schema, "KIND_TABLES", None)
        if kt is None and callable(getattr(schema, "kind_tables", None)):
            kt = {k: list(schema.kind_tables(k)) for k in self.kinds}
        self.assertIsNotNone(kt, "profilemate.schema has neither KIND_TABLES nor kind_tables(kind)")
        for k in self.shim_kinds:
            # A kind's tables are a set; each side may list them in its own order.
            self.assertEqual(sorted(kt.get(k, [])), sorted(self.kinds[k]), k)
        for k in kt:
            self.assertIn(k, self.kinds, "the shim knows kind %s, proto does not" % k)

    def test_target_kinds(self):
        paths = [p for p in glob.glob(os.path.join(SHIM, "profilemate", "targets", "*.py"))
                 if not p.endswith("__init__.py")]
        if not paths:
            self.skipTest("profilemate/targets not present yet: the target kinds check runs once it exists")
        targets = importlib.import_module("profilemate.targets")
        listed = targets.all_targets() if callable(getattr(targets, "all_targets", None)) else []
        # Every target module on disk must be in the one list.
        on_disk = {os.path.splitext(os.path.basename(p))[0] for p in paths} - {"_util"}
        self.assertEqual(on_disk, set(getattr(targets, "TARGET_MODULES", on_disk)),
                         "target modules on disk and profilemate.targets.TARGET_MODULES disagree")
        kinds = set()
        for val in [listed] + [getattr(targets, n) for n in dir(targets)]:
            if not isinstance(val, (list, tuple)):
                continue
            for t in val:
                for attr in ("kind", "kinds"):
                    v = t.get(attr) if isinstance(t, dict) else getattr(t, attr, None)
                    if isinstance(v, str):
                        kinds.add(v)
                    elif isinstance(v, (list, tuple, set, frozenset)):
                        kinds.update(v)
        self.assertTrue(kinds, "profilemate.targets lists no target with a kind/kinds attribute")
        for k in kinds:
            self.assertIn(k, self.shim_kinds, "a target records kind %r, which proto does not know" % k)


if __name__ == "__main__":
    unittest.main()
