"""Where events go: the agent's Unix socket when it answers, else the standalone folder.

Only the flush thread (and the final flush) call into a sink, so vLLM's threads never
touch a file or a socket.
"""
import json
import os
import sys
import time

from profilemate import schema, wire
from profilemate.identity import IDENT
from profilemate.recorder import RECORDER


def open_sink(state, socket_path, root):
    if socket_path:
        sink = SocketSink(state, socket_path, root)
        if sink.connect(first=True):
            return sink
        return CsvSink(state, root)
    return CsvSink(state, root)


def _atomic_json(path, obj):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class CsvSink:
    """session_<id>/<role>-<rank>-<pid>/ with the eleven CSVs and metadata.json."""

    def __init__(self, state, root):
        self.state = state
        self.root = root
        self.session_dir = os.path.join(root, "session_" + state.session)
        self.proc_dir = None
        self.files = {}
        self.writers = {}
        self.rows = 0

    def describe(self):
        return self.session_dir

    def forked(self):
        return CsvSink(self.state, self.root)

    def claim_announcement(self, session):
        try:
            os.makedirs(self.session_dir, exist_ok=True)
            fd = os.open(os.path.join(self.session_dir, ".announced"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            sys.stderr.write("[profilemate] cannot write %s: %s\n" % (self.session_dir, e))
            return False

    def _folder_name(self):
        ident = IDENT.as_dict()
        return "%s-%d-%d" % (ident["role"], IDENT.folder_rank(), os.getpid())

    def _ensure_dir(self):
        want = os.path.join(self.session_dir, self._folder_name())
        if self.proc_dir == want:
            return
        if self.proc_dir is None:
            os.makedirs(want, exist_ok=True)
            import csv
            for table in schema.STANDALONE_TABLES:
                path = os.path.join(want, table + ".csv")
                f = open(path, "a", newline="")
                w = csv.writer(f)
                if f.tell() == 0:
                    w.writerow(schema.header(table))
                self.files[table], self.writers[table] = f, w
        else:
            # Role or rank became known after the folder was made: the name follows.
            os.rename(self.proc_dir, want)
        self.proc_dir = want
        self.state.dirty = True

    def write(self, events, final=False):
        st = self.state
        if st.inherited and not events and not final:
            return
        if st.inherited and final and self.proc_dir is None and not events:
            return  # a forked helper that recorded nothing stays silent
        self._ensure_dir()
        if events:
            ident = IDENT.as_dict()
            host = os.environ.get("PROFILEMATE_HOST", "") or _hostname()
            common = [st.session, host, os.getpid(), ident["role"], ident["dp"], ident["pp"], ident["tp"], ident["ep"]]
            touched = set()
            for seq, step, ts_ns, kind, table, cols in events:
                w = self.writers.get(table)
                if w is None:
                    continue
                own = schema.table_columns(table) or sorted(cols)
                w.writerow(common + [seq, step, ts_ns] + [_cell(cols.get(c, "")) for c in own])
                touched.add(table)
                self.rows += 1
            for table in touched:
                self.files[table].flush()
        if st.dirty or final:
            st.dirty = False
            _atomic_json(os.path.join(self.proc_dir, "metadata.json"), _metadata())

    def close(self):
        if self.proc_dir is None:
            return
        for f in self.files.values():
            try:
                f.close()
            except Exception:
                pass
        merge_session(self.session_dir, _metadata(), os.path.basename(self.proc_dir))


def _cell(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return v


def _metadata():
    from profilemate import runtime
    return runtime.metadata()


def _hostname():
    import socket
    return socket.gethostname()


def merge_session(session_dir, meta, folder):
    """Adds this process to session.json under a file lock; the last to exit leaves the summary."""
    path = os.path.join(session_dir, "session.json")
    lock_path = os.path.join(session_dir, ".session.lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        fcntl = None
    with open(lock_path, "a") as lk:
        if fcntl:
            fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            try:
                with open(path) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {"session": meta["session"], "processes": {}}
            doc["processes"][folder] = {
                "pid": meta["pid"], "ident": meta["ident"], "targets": meta["targets"],
                "recorded": meta["recorded"], "dropped": meta["dropped"],
                "start_ns": meta["start_ns"], "end_ns": meta["end_ns"],
                "python": meta["python"], "vllm": meta["vllm"],
            }
            combined = {}
            for proc in doc["processes"].values():
                for t in proc["targets"]:
                    cur = combined.get(t["target"])
                    if cur is None or _RANK[t["status"]] > _RANK[cur]:
                        combined[t["target"]] = t["status"]
            doc["targets"] = combined
            doc["patched"] = sorted(k for k, v in combined.items() if v == "patched")
            doc["dropped"] = sum(p["dropped"] for p in doc["processes"].values())
            doc["start_ns"] = min(p["start_ns"] for p in doc["processes"].values())
            doc["end_ns"] = max(p["end_ns"] for p in doc["processes"].values())
            doc["updated_ns"] = time.time_ns()
            _atomic_json(path, doc)
        finally:
            if fcntl:
                fcntl.flock(lk, fcntl.LOCK_UN)


# For the session summary a target counts as patched if any process patched it.
_RANK = {"patched": 5, "failed": 4, "disabled": 3, "absent": 2, "not_loaded": 1}


class SocketSink:
    """Newline-delimited JSON to pmagent; reconnects with backoff, buffers meanwhile."""

    MAX_BACKOFF = 5.0

    def __init__(self, state, path, root):
        self.state = state
        self.path = path
        self.root = root
        self.sock = None
        self.rbuf = b""
        self.ident_version = -1
        self.status_sent = None
        self.next_try = 0.0
        self.backoff = 0.1
        self.warned = False

    def describe(self):
        return "agent socket %s" % self.path

    def forked(self):
        s = SocketSink(self.state, self.path, self.root)
        s.connect(first=False)
        return s

    def claim_announcement(self, session):
        from profilemate import bootstrap
        return bootstrap.state().get("mode") != "armed"

    def connect(self, first=False):
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(self.path)
        except OSError as e:
            s.close()
            if first or not self.warned:
                sys.stderr.write("[profilemate] agent socket %s refused (%s); %s\n" % (
                    self.path, e, "writing the standalone folder" if first else "buffering and retrying"))
                self.warned = True
            self.next_try = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)
            return False
        s.setblocking(False)
        self.sock, self.backoff, self.warned = s, 0.1, False
        self.ident_version, self.status_sent = -1, None
        meta = _metadata()
        self._send(wire.encode_hello(meta["session"], meta["pid"], meta["ppid"], meta["ident"],
                                     meta["python"], meta["vllm"], meta["argv"], meta["start_ns"],
                                     host=os.environ.get("PROFILEMATE_HOST", ""), title=_title()))
        return True

    def _send(self, data):
        """Blocking send from the flush thread only (short: the agent reads continuously)."""
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def _drop_conn(self):
        try:
            self.sock.close()
        except Exception:
            pass
        self.sock = None
        self.next_try = time.monotonic() + self.backoff

    def write(self, events, final=False):
        if self.sock is None:
            if time.monotonic() < self.next_try and not final:
                RECORDER.requeue(events)
                return
            if not self.connect():
                RECORDER.requeue(events)
                return
        try:
            self._read_ctl()
            statuses = [{"target": t["target"], "status": t["status"], "reason": t["reason"]}
                        for t in _metadata()["targets"]]
            if statuses != self.status_sent:
                self._send(wire.encode_status(os.getpid(), statuses))
                self.status_sent = statuses
            if events:
                for i in range(0, len(events), 500):
                    self._send(wire.encode_batch(os.getpid(), IDENT.as_dict(), events[i:i + 500], RECORDER.dropped))
                self.ident_version = IDENT.version
            elif self.ident_version != IDENT.version:
                self._send(wire.encode_batch(os.getpid(), IDENT.as_dict(), [], RECORDER.dropped))
                self.ident_version = IDENT.version
        except OSError:
            self._drop_conn()
            RECORDER.requeue(events)

    def _read_ctl(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                raise OSError("agent closed the connection")
            self.rbuf += chunk
        while b"\n" in self.rbuf:
            line, self.rbuf = self.rbuf.split(b"\n", 1)
            if line.strip():
                self._handle(line)

    def _handle(self, line):
        from profilemate import runtime
        try:
            msg = wire.decode(line)
        except ValueError as e:
            runtime.log("bad control line from the agent: %s" % e)
            return
        if msg.get("t") != "ctl":
            return
        if msg.get("op") == "profiler" and msg.get("name"):
            runtime.set_profiler(msg["name"], bool(msg.get("enabled")))
        elif msg.get("op") == "session" and msg.get("session"):
            self.state.session = msg["session"]
            os.environ["PROFILEMATE_SESSION"] = msg["session"]

    def close(self):
        if self.sock is None and not self.connect():
            return
        try:
            meta = _metadata()
            self._send(wire.encode_bye(meta["pid"], meta["dropped"], meta["last_seq"], meta["end_ns"]))
        except OSError:
            pass
        self._drop_conn()


def _title():
    from profilemate.identity import _title as t
    return t()
