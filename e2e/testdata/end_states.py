# A process tree for the end-state test: the top process starts a child that exits normally
# (clean), then one that kills itself (lost: its parent is not the agent), then kills itself with
# SIGKILL (killed: pmagent run is its parent). Each waits until the agent lists it first.
import json, os, signal, socket, subprocess, sys, time

def agent_sees(pid):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["PROFILEMATE_SOCKET"])
    s.sendall(b'{"t":"admin","v":1,"op":"status"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(1 << 20)
    s.close()
    return any(p["pid"] == pid for p in json.loads(buf)["processes"])

def wait_seen(pid):
    deadline = time.time() + 60
    while not agent_sees(pid):
        if time.time() > deadline:
            sys.exit("agent never saw pid %d" % pid)
        time.sleep(0.05)

role = sys.argv[1] if len(sys.argv) > 1 else "top"
if role == "clean":
    wait_seen(os.getpid())
    sys.exit(0)
if role == "lost":
    wait_seen(os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
wait_seen(os.getpid())
subprocess.run([sys.executable, __file__, "clean"], check=True)
subprocess.run([sys.executable, __file__, "lost"])
os.kill(os.getpid(), signal.SIGKILL)
