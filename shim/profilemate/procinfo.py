"""Facts about this process that every other shim module may use: ids, stderr lines, folders.

A leaf module (it imports no other profilemate module), so bootstrap, runtime and sinks all
depend on it and never on each other in a circle. Nothing here takes a lock or imports lazily:
these helpers run on the flush and exit paths, also in a freshly forked child.
"""
import os
import stat as _stat
import time

ENV_SESSION = "PROFILEMATE_SESSION"

_warned = set()


def new_session_id():
    """`YYYYMMDD_HHMMSS_<6 hex>` (DESIGN.md §0), local time."""
    return time.strftime("%Y%m%d_%H%M%S", time.localtime()) + "_" + os.urandom(3).hex()


def new_instance_id():
    """16 random hex digits naming one process's life: a pid repeats (containers, PID
    namespaces, a reused session), an instance id does not. A forked child takes a new one."""
    return os.urandom(8).hex()


def say(msg):
    """Writes one `[profilemate] ...` line to fd 2 with os.write: no Python-level buffer lock
    that a fork could leave held in the child. Never raises."""
    try:
        os.write(2, ("[profilemate] %s\n" % msg).encode("utf-8", "replace"))
    except Exception:
        pass


def write_line(text):
    """Writes `text` plus a newline to fd 2 as it is (the session's start-up lines)."""
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except Exception:
        pass


def say_once(key, msg):
    """say() only the first time `key` is seen in this process (a forked child starts afresh)."""
    if key in _warned:
        return False
    _warned.add(key)
    say(msg)
    return True


def reset_after_fork():
    _warned.clear()


def temp_root():
    """The temp folder Go's os.TempDir() also picks: $TMPDIR, else /tmp."""
    return os.environ.get("TMPDIR") or "/tmp"


def user_temp_dir():
    """`$TMPDIR/profilemate-<uid>`: the per-user folder of `pmagent serve` (socket) and of the
    shim's fallback output; created 0700 when missing. Returns the path (it may be unusable:
    callers check with own_folder())."""
    path = os.path.join(temp_root(), "profilemate-%d" % os.getuid())
    try:
        os.mkdir(path, 0o700)
    except OSError:
        pass
    return path


def own_folder(path, trusted=None):
    """'' when `path` is a folder owned by us (or by a trusted uid: root and PROFILEMATE_AGENT_UID)
    that no other user may write; otherwise the reason it is refused (issue 16: a folder another
    user created first, or one with loose modes, could hand our data to that user)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return "cannot stat %s: %s" % (path, e.strerror or e)
    if not _stat.S_ISDIR(st.st_mode):
        return "%s is not a folder" % path
    uids = trusted_uids() if trusted is None else trusted
    if st.st_uid not in uids:
        return "%s belongs to uid %d, not to uid %s" % (path, st.st_uid, "/".join(str(u) for u in sorted(uids)))
    if st.st_mode & 0o022 and not st.st_mode & _stat.S_ISVTX:
        return "%s has mode %04o: other users may write to it" % (path, st.st_mode & 0o7777)
    return ""


def trusted_uids():
    """uids whose sockets and folders the shim trusts: itself, root, and the uids listed in
    PROFILEMATE_AGENT_UID (comma-separated; for an agent running as its own service user)."""
    uids = {os.getuid(), 0}
    for part in os.environ.get("PROFILEMATE_AGENT_UID", "").split(","):
        part = part.strip()
        if part.isdigit():
            uids.add(int(part))
    return uids
