"""Shim -> agent wire: newline-delimited JSON, one object per line (docs/ARCHITECTURE.md).

Every encoder returns the bytes of one line, newline included.
"""
import json

VERSION = 1


def _line(obj):
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str) + "\n").encode("utf-8")


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
    """events: dicts from event() or recorder tuples (seq, step, ts_ns, kind, table, cols)."""
    evs = [e if isinstance(e, dict) else event(e[3], e[4], e[0], e[1], e[2], e[5]) for e in events]
    return _line({"t": "batch", "v": VERSION, "pid": pid, "ident": dict(ident), "events": evs,
                  "dropped": dropped})


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
