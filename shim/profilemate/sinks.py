"""Where events go: the agent's Unix socket when one answers, else the standalone folder.

Only the flush thread (and the final flush) call into a sink, so vLLM's threads never touch a
file or a socket. This module imports no other module of the shim's start-up (bootstrap,
runtime): what it needs from the process's state it reads from the `state` object runtime hands
over (`state.metadata()`, `state.on_ctl(msg)`, session, flags). Everything it uses is imported
here at load time, never on the flush path (fork safety).

Files and folders are written 0640/0750 (argv and environment arrive redacted).
"""
import collections
import csv
import fcntl
import json
import os
import socket
import stat
import time

from profilemate import procinfo, schema, wire
from profilemate.identity import IDENT, _title as proc_title
from profilemate.recorder import RECORDER

ENV_BUFFER_MB = "PROFILEMATE_BUFFER_MB"
DEFAULT_BUFFER_MB = 64
SOCKET_OFF = "off"  # PROFILEMATE_SOCKET=off: standalone folder, no agent lookup
SYSTEM_SOCKET = "/run/profilemate/agent.sock"
DIR_MODE = 0o750
FILE_MODE = 0o640

_host = []


def hostname():
    if not _host:
        _host.append(socket.gethostname())
    return _host[0]


def agent_candidates(environ=None):
    """[(path, where)]: the default sockets of `pmagent serve`, in the order of
    agent.DefaultSocket (agent/server.go): root's /run/profilemate/agent.sock, systemd's
    $RUNTIME_DIRECTORY/agent.sock, $XDG_RUNTIME_DIR/profilemate/agent.sock, then the per-user
    temp folder $TMPDIR/profilemate-<uid>/agent.sock."""
    env = os.environ if environ is None else environ
    out = [(SYSTEM_SOCKET, "root's default")]
    rd = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if rd:
        out.append((os.path.join(rd, "agent.sock"), "RUNTIME_DIRECTORY"))
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg:
        out.append((os.path.join(xdg, "profilemate", "agent.sock"), "XDG_RUNTIME_DIR"))
    tmp = env.get("TMPDIR") or "/tmp"
    out.append((os.path.join(tmp, "profilemate-%d" % os.getuid(), "agent.sock"), "per-user temp folder"))
    return out


def socket_candidates(environ=None):
    """The paths of agent_candidates(), in order (agent.SocketCandidates' counterpart; a Go test
    in agent/ compares the two)."""
    return [path for path, _ in agent_candidates(environ)]


def check_socket(path):
    """'' when `path` is a socket we may send to, else the reason (issue 16: a folder another user
    created first could hold a socket that receives our hello).

    The folder must not be writable by others, and belong to us, root, a PROFILEMATE_AGENT_UID, or
    to whoever an administrator made it for: a folder whose parent only root can write (systemd's
    /run/profilemate for a service user) is trusted with its owner. The socket must belong to one
    of those uids. A folder in a shared parent (/tmp) is trusted only with a trusted owner."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "cannot stat %s: %s" % (path, e.strerror or e)
    if not stat.S_ISSOCK(st.st_mode):
        return "%s is not a socket" % path
    uids = procinfo.trusted_uids()
    folder = os.path.dirname(os.path.abspath(path)) or "/"
    if _root_made(folder):
        try:
            uids = uids | {os.lstat(folder).st_uid}
        except OSError:
            pass
    bad = procinfo.own_folder(folder, uids)
    if bad:
        return bad
    if st.st_uid not in uids:
        return "%s belongs to uid %d, not to uid %s" % (path, st.st_uid, "/".join(str(u) for u in sorted(uids)))
    return ""


def _root_made(folder):
    """True when only root could have created `folder`: its parent belongs to root and no one
    else may write to it (not even with the sticky bit, which /tmp has)."""
    try:
        st = os.lstat(os.path.dirname(folder) or "/")
    except OSError:
        return False
    return st.st_uid == 0 and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o022


def buffer_limit():
    """Bytes of undelivered batch lines kept in memory per process (PROFILEMATE_BUFFER_MB, 64)."""
    try:
        mb = float(os.environ.get(ENV_BUFFER_MB, DEFAULT_BUFFER_MB))
    except ValueError:
        mb = DEFAULT_BUFFER_MB
    return max(0, int(mb * 1024 * 1024))


def fallback_root():
    """The per-user temp folder the standalone output moves to when its folder is unwritable."""
    base = procinfo.user_temp_dir()
    if procinfo.own_folder(base, {os.getuid()}):
        return ""
    return os.path.join(base, "output")


def agent_name_error(state):
    """One line naming PROFILEMATE_SESSION or PROFILEMATE_HOST when the agent's name grammar
    (schema.name_error) refuses it, else None; the standalone folder takes any name."""
    for var, what, name in (("PROFILEMATE_SESSION", "session", getattr(state, "session", "")),
                            ("PROFILEMATE_HOST", "host", os.environ.get("PROFILEMATE_HOST", ""))):
        if name:
            why = schema.name_error(what, name)
            if why:
                return "%s=%r is not a valid %s name (%s)" % (var, name, what, why)
    return None


def open_sink(state, socket_path, root):
    """A SocketSink when an agent answers (the named socket, or else the first default socket
    that passes check_socket and accepts), else a CsvSink under `root`."""
    if socket_path == SOCKET_OFF:
        return CsvSink(state, root).prepare()
    bad = agent_name_error(state)
    if bad:
        if socket_path or any(os.path.exists(p) for p, _ in agent_candidates()):
            procinfo.say("%s; the agent would refuse it, so this process writes the standalone folder" % bad)
        return CsvSink(state, root).prepare()
    if socket_path:
        sink = SocketSink(state, socket_path, "PROFILEMATE_SOCKET", root)
        if sink.connect(first=True):
            return sink
        return CsvSink(state, root).prepare()
    for path, where in agent_candidates():
        if not os.path.exists(path):
            continue
        sink = SocketSink(state, path, where, root)
        if sink.connect(first=True, quiet=True):
            return sink
    return CsvSink(state, root).prepare()


def _atomic_json(path, obj, indent=1):
    """Writes JSON to a temp file (0640) and renames it into place. indent=None uses json's C
    encoder: session.json grows with every process and is rewritten at each exit."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=indent, sort_keys=True))
    os.replace(tmp, path)


def _open_append(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    return os.fdopen(fd, "a", newline="")


class CsvSink:
    """session_<id>/<role>-<rank>-<pid>/ with the eleven CSVs and metadata.json.

    A folder that already exists (another process with the same pid: a container, a PID
    namespace, a reused session) is never shared: this process's folder then ends in
    `-<instance id>`. When the folder cannot be written, one line says where and why and the
    output moves to the per-user temp folder (fallback_root); when that fails too, one more line
    and this sink stops (its events are counted as dropped)."""

    def __init__(self, state, root):
        self.state = state
        self.files = {}
        self.writers = {}
        self.rows = 0
        self.stopped = False
        self.can_fall_back = True
        self._set_root(root)

    def _set_root(self, root):
        self.root = root
        self.session_dir = os.path.join(root, "session_" + self.state.session)
        self.proc_dir = None
        self.suffix = ""
        self._close_files()

    def describe(self):
        return self.session_dir

    def forked(self):
        s = CsvSink(self.state, self.root)
        s.can_fall_back = self.can_fall_back
        s.stopped = self.stopped
        return s

    def prepare(self):
        """Makes the session folder now, so an unwritable root falls back before the start-up
        lines name it. Returns self."""
        try:
            self._mkdir_session()
        except OSError as e:
            self._fail(self.session_dir, e)
        return self

    def _mkdir_session(self):
        if not os.path.isdir(self.session_dir):
            os.makedirs(self.session_dir, DIR_MODE, exist_ok=True)

    def _fail(self, path, e):
        """Handles an unwritable folder once: falls back, or stops. True when writing may be retried."""
        reason = getattr(e, "strerror", None) or str(e)
        fb = fallback_root() if self.can_fall_back else ""
        self.can_fall_back = False
        if fb and os.path.abspath(fb) != os.path.abspath(self.root):
            procinfo.say("cannot write %s (%s): this process writes under %s instead" % (path, reason, fb))
            self._set_root(fb)
            try:
                self._mkdir_session()
                return True
            except OSError as e2:
                path, reason = self.session_dir, getattr(e2, "strerror", None) or str(e2)
        procinfo.say("cannot write %s (%s): the standalone folder is off in this process, its events "
                     "are counted as dropped" % (path, reason))
        self.stopped = True
        self._close_files()
        return False

    def claim_announcement(self, session):
        if self.stopped:
            return not self.state.armed
        try:
            self._mkdir_session()
            fd = os.open(os.path.join(self.session_dir, ".announced"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            os.close(fd)
            return True
        except FileExistsError:
            return False
        except OSError:
            return not self.state.armed

    def _folder_name(self):
        ident = IDENT.as_dict()
        return "%s-%d-%d" % (ident["role"], IDENT.folder_rank(), os.getpid())

    def _ensure_dir(self):
        want = os.path.join(self.session_dir, self._folder_name() + self.suffix)
        if self.proc_dir == want:
            return
        if self.proc_dir is None:
            self._mkdir_session()
            try:
                os.mkdir(want, DIR_MODE)
            except FileExistsError:
                # Another process had this pid in this session: never share its folder.
                self.suffix = "-" + self.state.instance
                want = os.path.join(self.session_dir, self._folder_name() + self.suffix)
                os.mkdir(want, DIR_MODE)
            for table in schema.STANDALONE_TABLES:
                f = _open_append(os.path.join(want, table + ".csv"))
                w = csv.writer(f)
                if f.tell() == 0:
                    w.writerow(schema.header(table))
                    f.flush()  # a table without rows still has its header, even after a kill
                self.files[table], self.writers[table] = f, w
        else:
            # Role or rank became known after the folder was made: the name follows, but never
            # onto another process's folder.
            if os.path.exists(want):
                self.suffix = self.suffix or "-" + self.state.instance
                want = os.path.join(self.session_dir, self._folder_name() + self.suffix)
            if want != self.proc_dir:
                os.rename(self.proc_dir, want)
        self.proc_dir = want
        self.state.dirty = True

    def write(self, events, final=False):
        if self.stopped:
            RECORDER.add_dropped(len(events))
            return
        try:
            self._write(events, final)
        except OSError as e:
            if self._fail(getattr(e, "filename", None) or self.proc_dir or self.session_dir, e):
                try:
                    self._write(events, final)
                    return
                except OSError as e2:
                    self._fail(getattr(e2, "filename", None) or self.session_dir, e2)
            RECORDER.add_dropped(len(events))

    def _write(self, events, final):
        st = self.state
        if st.inherited and not events and not final:
            return
        if st.inherited and final and self.proc_dir is None and not events:
            return  # a forked helper that recorded nothing stays silent
        self._ensure_dir()
        if events:
            ident = IDENT.as_dict()
            host = os.environ.get("PROFILEMATE_HOST", "") or hostname()
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
            _atomic_json(os.path.join(self.proc_dir, "metadata.json"), st.metadata())

    def _close_files(self):
        for f in list(getattr(self, "files", {}).values()):
            try:
                f.close()
            except Exception:
                pass
        self.files, self.writers = {}, {}

    def close(self):
        if self.proc_dir is None or self.stopped:
            return
        self._close_files()
        try:
            merge_session(self.session_dir, self.state.metadata(), os.path.basename(self.proc_dir))
        except OSError as e:
            procinfo.say_once("session.json", "cannot write %s (%s)" % (
                os.path.join(self.session_dir, "session.json"), e.strerror or e))


def _cell(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return v


def merge_session(session_dir, meta, folder):
    """Adds this process to session.json under a file lock; the last to exit leaves the summary."""
    path = os.path.join(session_dir, "session.json")
    lock_path = os.path.join(session_dir, ".session.lock")
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    with os.fdopen(fd, "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            try:
                with open(path) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {"session": meta["session"], "processes": {}}
            doc["processes"][folder] = {
                "pid": meta["pid"], "instance": meta.get("instance", ""), "ident": meta["ident"],
                "targets": meta["targets"], "recorded": meta["recorded"], "dropped": meta["dropped"],
                "start_ns": meta["start_ns"], "end_ns": meta["end_ns"],
                "end_state": meta.get("end_state", ""), "end_signal": meta.get("end_signal", ""),
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
            _atomic_json(path, doc, indent=None)
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)


# For the session summary a target counts as patched if any process patched it.
_RANK = {"patched": 5, "failed": 4, "disabled": 3, "absent": 2, "not_loaded": 1}


class SocketSink:
    """Newline-delimited JSON to pmagent.

    Batches are encoded once and kept until the socket took them. When the agent goes away the
    sink keeps them (up to PROFILEMATE_BUFFER_MB, oldest spilled beyond it to this process's
    standalone folder), retries with backoff, and on reconnecting sends a new hello with the same
    session and instance, then the kept batches in sequence order. At exit with no agent, what
    is kept goes to the standalone folder. Each outage is said once (path, reason, where events
    go), nothing is dropped without a count."""

    MAX_BACKOFF = 5.0

    def __init__(self, state, path, where, root):
        self.state = state
        self.path = path
        self.where = where
        self.root = root
        self.sock = None
        self.rbuf = b""
        self.ident_version = -1
        self.status_sent = None
        self.next_try = 0.0
        self.backoff = 0.1
        self.connected_once = False
        self.outage_said = False
        self.kept = collections.deque()  # (events, encoded batch line), oldest first
        self.kept_bytes = 0
        # Sent but not yet acknowledged, once the agent acknowledges ({"op":"ack","seq":N}): an
        # agent that stops while lines sit unread in its socket buffer loses them, so they are
        # replayed after the reconnect. Agents that never acknowledge: nothing is held here.
        self.sent = collections.deque()
        self.sent_bytes = 0
        self.acks = False
        self.acked_seq = 0
        self.unconfirmed = 0  # sent, never acknowledged, let go to stay within the bound
        self.limit = buffer_limit()
        self.spill = None  # CsvSink for what does not fit in memory
        self.spilled = 0
        self.reconnects = 0
        self.key_sent = ""  # PROFILEMATE_INSTANCE_KEY as the last hello said it

    def describe(self):
        return "agent socket %s (%s)" % (self.path, self.where)

    def forked(self):
        s = SocketSink(self.state, self.path, self.where, self.root)
        s.connect(first=False)
        return s

    def claim_announcement(self, session):
        return not self.state.armed

    def connect(self, first=False, quiet=False):
        bad = check_socket(self.path)
        if bad:
            self._refused("refused: %s" % bad, first, quiet)
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(self.path)
        except OSError as e:
            s.close()
            self._refused("not answering (%s)" % (e.strerror or e), first, quiet)
            return False
        s.setblocking(False)
        self.sock, self.backoff = s, 0.1
        self.ident_version, self.status_sent = -1, None
        if self.connected_once:
            self.reconnects += 1
            procinfo.say("agent socket %s is back: new hello for session %s, replaying %d kept events" % (
                self.path, self.state.session, sum(len(e) for e, _ in self.kept)))
        self.connected_once = True
        self.outage_said = False
        try:
            self._hello()
        except OSError as e:
            self._drop_conn("hello not sent (%s)" % (e.strerror or e))
            return False
        return True

    def _hello(self):
        """Sends this process's hello; raises OSError."""
        meta = self.state.metadata()
        key = os.environ.get("PROFILEMATE_INSTANCE_KEY", "")
        self._send(wire.encode_hello(meta["session"], meta["pid"], meta["ppid"], meta["ident"],
                                     meta["python"], meta["vllm"], meta["argv"], meta["start_ns"],
                                     host=os.environ.get("PROFILEMATE_HOST", ""),
                                     title=self.state.title() if hasattr(self.state, "title") else "",
                                     instance=meta.get("instance", ""), reconnects=self.reconnects,
                                     session_given=getattr(self.state, "session_given", False),
                                     instance_key=key))
        self.key_sent = key

    def _refused(self, why, first, quiet):
        self.next_try = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)
        if quiet:
            return
        if first:
            procinfo.say("agent socket %s %s; writing the standalone folder" % (self.path, why))
        elif not self.outage_said:
            self.outage_said = True
            procinfo.say("agent socket %s %s; keeping events (up to %d MiB in memory, then in %s) and retrying" % (
                self.path, why, self.limit // (1024 * 1024), self._spill_sink().describe()))

    def _send(self, data):
        """Blocking send from the flush thread only (short: the agent reads continuously)."""
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def _drop_conn(self, why=""):
        try:
            self.sock.close()
        except Exception:
            pass
        self.sock = None
        self._requeue_sent()
        self.next_try = time.monotonic() + self.backoff
        if not self.outage_said:
            self.outage_said = True
            procinfo.say("agent socket %s lost%s; keeping events (up to %d MiB in memory, then in %s) and reconnecting" % (
                self.path, " (%s)" % why if why else "", self.limit // (1024 * 1024), self._spill_sink().describe()))

    def _spill_sink(self):
        if self.spill is None:
            self.spill = CsvSink(self.state, self.root)
        return self.spill

    def _keep(self, events):
        ident = IDENT.as_dict()
        pid = os.getpid()
        for i in range(0, len(events), 500):
            chunk = events[i:i + 500]
            line = wire.encode_batch(pid, ident, chunk, RECORDER.dropped)
            self.kept.append((chunk, line))
            self.kept_bytes += len(line)

    def _bound(self):
        """Within the memory bound: lets go of the oldest sent-but-unacknowledged batches first
        (counted as unconfirmed), then spills the oldest unsent ones to the standalone folder."""
        while self.sent and self.kept_bytes + self.sent_bytes > self.limit:
            chunk, line = self.sent.popleft()
            self.sent_bytes -= len(line)
            self.unconfirmed += len(chunk)
        while self.kept and self.kept_bytes > self.limit:
            self._spill_one()

    def _acked(self, seq):
        """The agent took over every event up to `seq`."""
        self.acks = True
        self.acked_seq = max(self.acked_seq, seq)
        while self.sent and self.sent[0][0][-1][0] <= self.acked_seq:
            chunk, line = self.sent.popleft()
            self.sent_bytes -= len(line)

    def _requeue_sent(self):
        """After a lost connection, unacknowledged batches go back in front of the unsent ones."""
        while self.sent:
            chunk, line = self.sent.pop()
            self.sent_bytes -= len(line)
            self.kept.appendleft((chunk, line))
            self.kept_bytes += len(line)

    def _spill_one(self):
        chunk, line = self.kept.popleft()
        self.kept_bytes -= len(line)
        self.spilled += len(chunk)
        self.state.inherited = False
        self._spill_sink().write(chunk)

    def write(self, events, final=False):
        if events:
            self._keep(events)
        if self.sock is None:
            if (time.monotonic() < self.next_try and not final) or not self.connect():
                self._bound()
                return
        try:
            self._read_ctl()
            if os.environ.get("PROFILEMATE_INSTANCE_KEY", "") != self.key_sent:
                # The key arrived after the start (a Ray actor gets the copied variables later):
                # a new hello moves this process into its instance's session before more batches.
                self._hello()
            meta = self.state.metadata()
            statuses = ([{"target": t["target"], "status": t["status"], "reason": t["reason"]}
                         for t in meta["targets"]], meta.get("tables") or [])
            if statuses != self.status_sent:
                self._send(wire.encode_status(os.getpid(), statuses[0], statuses[1]))
                self.status_sent = statuses
            sent = False
            while self.kept:
                chunk, line = self.kept[0]
                self._send(line)
                self.kept.popleft()
                self.kept_bytes -= len(line)
                if self.acks and chunk[-1][0] > self.acked_seq:
                    self.sent.append((chunk, line))
                    self.sent_bytes += len(line)
                sent = True
            self._bound()
            if sent:
                self.ident_version = IDENT.version
            elif self.ident_version != IDENT.version:
                self._send(wire.encode_batch(os.getpid(), IDENT.as_dict(), [], RECORDER.dropped))
                self.ident_version = IDENT.version
        except OSError as e:
            self._drop_conn(e.strerror or str(e))
            self._bound()

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
        try:
            msg = wire.decode(line)
        except ValueError as e:
            procinfo.say_once("bad-ctl", "bad control line from the agent: %s" % e)
            return
        if msg.get("t") != "ctl":
            return
        if msg.get("op") == "ack":
            try:
                self._acked(int(msg.get("seq", 0)))
            except (TypeError, ValueError):
                pass
            return
        self.state.on_ctl(msg)

    def close(self):
        """Says goodbye; with no agent, what is kept goes to the standalone folder (its metadata
        and session.json name the spill)."""
        if self.sock is None and not self.connect():
            self._finish_standalone()
            return
        if self.kept:
            self.write([], final=True)
            if self.sock is None:
                self._finish_standalone()
                return
        try:
            meta = self.state.metadata()
            self._send(wire.encode_bye(meta["pid"], meta["dropped"], meta["last_seq"], meta["end_ns"],
                                       end_state=meta.get("end_state", ""), end_signal=meta.get("end_signal", "")))
        except OSError:
            self._finish_standalone()
        self._drop_conn_quiet()
        if self.spilled:
            self.spill.write([], final=True)
            self.spill.close()

    def _finish_standalone(self):
        n = sum(len(e) for e, _ in self.kept)
        while self.kept:
            self._spill_one()
        sink = self._spill_sink()
        sink.write([], final=True)
        sink.close()
        if n or self.spilled:
            procinfo.say("agent socket %s gone at exit: %d events are in %s" % (self.path, self.spilled, sink.proc_dir or sink.describe()))

    def _drop_conn_quiet(self):
        try:
            self.sock.close()
        except Exception:
            pass
        self.sock = None
