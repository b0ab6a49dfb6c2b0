"""Shim -> agent wire: newline-delimited JSON, one object per line (docs/ARCHITECTURE.md).

Every encoder returns the bytes of one line, newline included.

Batch lines are the flush thread's main cost (GIL time taken from vLLM), so encode_batch writes
each recorded event straight into its JSON text with a per-table encoder instead of building a
dict per event for json.dumps (docs/BENCHMARKS.md, "Recording and flush-thread CPU"). The text
means the same as json.dumps of the event dict: the same keys and values, a float stays a float
(2.0, not 2), strings escaped as json does (ensure_ascii=False); columns may come in another
order. What the fast encoder does not know (a table missing from the schema, a column set it has
not seen, a value of an unexpected type) goes through json.dumps as before, one event at a time.
"""
import json
from json.encoder import encode_basestring as _escape
from operator import itemgetter

from profilemate import schema

VERSION = 1


def _line(obj):
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def ident(role, dp=-1, pp=-1, tp=-1, ep=-1, rank=-1):
    return {"role": role, "dp": dp, "pp": pp, "tp": tp, "ep": ep, "rank": rank}


def encode_hello(session, pid, ppid, ident, python, vllm, argv, start_ns, host="", gpu_uuid="", title="",
                 instance="", reconnects=0, session_given=False, instance_key=""):
    """instance: 16 hex naming this process's life (pid plus instance is unique where a pid
    repeats); reconnects: 0 on the first hello, n on the n-th reconnection (same session and
    instance; the kept batches follow in sequence order); session_given: the session came from
    PROFILEMATE_SESSION at start, not from the shim; instance_key: PROFILEMATE_INSTANCE_KEY (the
    multi-node instance, docs/multinode.md)."""
    obj = {"t": "hello", "v": VERSION, "session": session, "host": host, "pid": pid, "ppid": ppid}
    obj.update({k: ident[k] for k in ("role", "dp", "pp", "tp", "ep", "rank")})
    obj.update({"python": python, "vllm": vllm, "gpu_uuid": gpu_uuid, "title": title,
                "argv": list(argv), "start_ns": start_ns, "instance": instance, "reconnects": reconnects})
    if session_given:
        obj["session_given"] = True
    if instance_key:
        obj["instance_key"] = instance_key
    return _line(obj)


def event(kind, table, seq, step, ts_ns, cols):
    return {"kind": kind, "table": table, "seq": seq, "step": step, "ts_ns": ts_ns, "cols": cols}


def encode_batch(pid, ident, events, dropped=0):
    """One batch line. events: dicts from event() or recorder tuples (seq, step, ts_ns, kind,
    table, cols); pid and dropped ints, ident the identity dict (ident())."""
    parts = []
    add = parts.append
    encoders = _ENCODERS
    for e in events:
        if e.__class__ is not tuple:
            add(_dumps(e))
            continue
        try:
            enc = encoders[e[4]].get(len(e[5]))
            if enc is not None:
                add(enc(e))
                continue
        except Exception:  # a value or column set the table's encoder does not take
            pass
        add(_event_text(e))
    # surrogatepass: a lone surrogate in a string (no UTF-8 for it) costs that cell, which the agent
    # reads as invalid text, never the whole batch.
    return ('{"t":"batch","v":%d,"pid":%s,"ident":%s,"events":[%s],"dropped":%s}\n' % (
        VERSION, _dumps(pid), _dumps(dict(ident)), ",".join(parts), _dumps(dropped))).encode("utf-8", "surrogatepass")


def _event_text(e):
    """The event through json.dumps (the general path); makes an encoder for its column set when
    its table is known and none exists yet."""
    seq, step, ts_ns, kind, table, cols = e
    try:
        by_len = _ENCODERS.get(table)
        if by_len is None:
            by_len = _ENCODERS[table] = {}
        if isinstance(cols, dict) and len(cols) not in by_len and len(by_len) < 8:
            by_len[len(cols)] = _make_encoder(kind, table, tuple(cols))
    except Exception:
        pass
    return _dumps(event(kind, table, seq, step, ts_ns, cols))


# table -> {number of columns: encoder(event tuple) -> JSON text}; an encoder raises on anything
# it does not take (other column names, a value of another type), and the event goes the general way.
_ENCODERS = {}


class _Tokens(dict):
    """String cell -> its JSON text (a bounded cache); a miss computes it (_token)."""

    def __missing__(self, v):
        return _token(v)


_STR_TOKENS = _Tokens({None: "null", "": '""'})


def _token(v):
    """JSON text of one cell the inline checks did not take: empty cells (None, ""), bools,
    strings, ints in float columns; raises TypeError for anything else (the event then goes
    through json.dumps)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    cls = v.__class__
    if cls is str:
        t = _escape(v)
        if len(_STR_TOKENS) < 4096 and len(v) <= 256:
            _STR_TOKENS[v] = t
        return t
    if cls is int:
        return "%d" % v
    if cls is float and v - v == 0.0:
        return repr(v)
    raise TypeError("no fast text for %r" % (cls,))


def _make_encoder(kind, table, keys):
    """Compiles the encoder of one (table, column set): the event's header and keys are constant
    text, each cell is checked inline (ints and finite floats go into the text as they are, strings
    through a cache of their escaped text, the rest through _token)."""
    types = schema.column_types(table)
    if kind != schema.table_kind(table) or not keys or any(k not in types or k.__class__ is not str for k in keys):
        return None
    names = ["v%d" % i for i in range(len(keys))]
    cells, exprs = [], []
    for k, v in zip(keys, names):
        cells.append("%s:%%s" % _escape(k).replace("%", "%%"))
        typ = types[k]
        if typ == "int":
            exprs.append("(%s if %s.__class__ is int else _token(%s))" % (v, v, v))
        elif typ == "float":
            exprs.append("(%s if %s.__class__ is float and %s - %s == 0.0 else _token(%s))" % (v, v, v, v, v))
        elif typ == "string":
            exprs.append("_str[%s]" % v)
        else:
            exprs.append("_token(%s)" % v)
    head = '{"kind":%s,"table":%s,' % (_escape(kind), _escape(table))
    fmt = (head.replace("%", "%%") + '"seq":%d,"step":%d,"ts_ns":%d,"cols":{' + ",".join(cells) + "}}")
    unpack = ("%s = _get(cols)" % ", ".join(names)) if len(keys) > 1 else "%s = cols[%r]" % (names[0], keys[0])
    src = ("def encode(e):\n"
           "    seq, step, ts_ns, _k, _t, cols = e\n"
           "    if len(cols) != %d:\n"
           "        raise KeyError('column set')\n"
           "    %s\n"
           "    return _fmt %% (seq, step, ts_ns, %s)\n") % (len(keys), unpack, ", ".join(exprs))
    scope = {"_get": itemgetter(*keys), "_fmt": fmt, "_token": _token, "_str": _STR_TOKENS}
    exec(compile(src, "<profilemate.wire %s>" % table, "exec"), scope)
    return scope["encode"]


def encode_status(pid, targets, tables=()):
    """targets: [{target, status, reason}]; tables: [{table, status}] (metadata.json "tables")."""
    return _line({"t": "status", "v": VERSION, "pid": pid,
                  "targets": [{"target": t["target"], "status": t["status"], "reason": t.get("reason", "")}
                              for t in targets],
                  "tables": [{"table": t["table"], "status": t["status"]} for t in tables]})


def encode_bye(pid, dropped, last_seq, end_ns, end_state="clean", end_signal=""):
    """end_state: "clean" (a normal exit) or "killed" with end_signal ("SIGTERM") when a
    default-action signal ends the process after its last flush."""
    return _line({"t": "bye", "v": VERSION, "pid": pid, "dropped": dropped, "last_seq": last_seq,
                  "end_ns": end_ns, "end_state": end_state or "clean", "end_signal": end_signal})


def decode(line):
    """Parses one line from the agent (ctl messages); raises ValueError on bad input."""
    obj = json.loads(line)
    if not isinstance(obj, dict) or "t" not in obj:
        raise ValueError("not a wire object: %r" % (line[:80],))
    return obj
