"""Secrets never leave the process (issue 16, point 3): one redaction list for argv (`--k=v`,
`--k v`) and environment variables, applied before metadata.json, session.json or the agent
hello; session folders 0750 and files 0640."""
import glob
import os
import shutil
import stat
import sys
import tempfile
import unittest

from tests import helpers as h
from tests.test_lifecycle import Listener, wait_for

sys.path.insert(0, h.SHIM)
from profilemate import redact  # noqa: E402

API_KEY = "S3CRET-api-key-value"
HF_TOKEN = "hf_S3CRETtokenvalue"
PASSWORD = "pw-S3CRET-value"


class RedactionList(unittest.TestCase):
    def test_argv_forms(self):
        got = redact.argv(["vllm", "serve", "m", "--api-key", API_KEY, "--hf-token=" + HF_TOKEN,
                           "--db-password", PASSWORD, "--max-num-batched-tokens", "8192", "--tokenizer", "t",
                           "--ssl-keyfile", "/etc/k.pem", "--port", "8000"])
        self.assertEqual(got, ["vllm", "serve", "m", "--api-key", redact.REDACTED, "--hf-token=" + redact.REDACTED,
                               "--db-password", redact.REDACTED, "--max-num-batched-tokens", "8192",
                               "--tokenizer", "t", "--ssl-keyfile", "/etc/k.pem", "--port", "8000"])

    def test_flag_without_value_keeps_the_next_option(self):
        self.assertEqual(redact.argv(["--api-key", "--port", "1"]), ["--api-key", "--port", "1"])

    def test_env_assignment_words_and_variables(self):
        self.assertEqual(redact.argv(["env", "HF_TOKEN=" + HF_TOKEN, "vllm"]),
                         ["env", "HF_TOKEN=" + redact.REDACTED, "vllm"])
        got = redact.env({"HF_TOKEN": HF_TOKEN, "VLLM_API_KEY": API_KEY, "AWS_SECRET_ACCESS_KEY": "x",
                          "MY_AUTH_HEADER": "x", "VLLM_LOGGING_LEVEL": "INFO", "CUDA_VISIBLE_DEVICES": "0,1"})
        self.assertEqual(got, {"HF_TOKEN": redact.REDACTED, "VLLM_API_KEY": redact.REDACTED,
                               "AWS_SECRET_ACCESS_KEY": redact.REDACTED, "MY_AUTH_HEADER": redact.REDACTED,
                               "VLLM_LOGGING_LEVEL": "INFO", "CUDA_VISIBLE_DEVICES": "0,1"})

    def test_known_vllm_names(self):
        for name in sorted(redact.KNOWN_FLAGS | redact.KNOWN_ENV):
            self.assertTrue(redact.is_secret_name(name), name)


def grep_tree(root, needles):
    hits = []
    for path in glob.glob(os.path.join(root, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            hits += ["%s in %s" % (n, path) for n in needles if n.encode() in data]
    return hits


@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class SessionHoldsNoSecret(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="pm-redact-")
        self.addCleanup(shutil.rmtree, self.out, True)

    def serve(self, env):
        e = {"PMSIM_STEP_WORK_MS": "0", "PMSIM_TP": "2", "PMSIM_REQUESTS": "4", "HF_TOKEN": HF_TOKEN,
             "VLLM_API_KEY": API_KEY, "TMPDIR": self.out}
        e.update(env)
        old = os.umask(0o022)
        try:
            return h.run([os.path.join(h.TESTBED, "bin", "vllm"), "serve", "m", "--api-key", API_KEY,
                          "--hf-token=" + HF_TOKEN], [os.path.join(h.TESTBED, "eras", "main_2026_08_20"), h.TESTBED],
                         env=e, out_dir=os.path.join(self.out, "pm"))
        finally:
            os.umask(old)

    def test_standalone_folder(self):
        r = self.serve({})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(grep_tree(self.out, [API_KEY, HF_TOKEN]), [])
        self.assertNotIn(API_KEY, r.stderr)
        self.assertNotIn(HF_TOKEN, r.stderr)
        session = h.sessions(os.path.join(self.out, "pm"))[0]
        procs = h.proc_dirs(session)
        self.assertEqual(len(procs), 4)
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertIn("--api-key", meta["argv"])
        self.assertIn(redact.REDACTED, meta["argv"])
        self.assertEqual(meta["env"]["HF_TOKEN"], redact.REDACTED)
        for d in [session] + procs:
            self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o750, d)
        for f in glob.glob(os.path.join(session, "**"), recursive=True):
            if os.path.isfile(f):
                self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), 0o640, f)

    def test_agent_hello(self):
        folder = os.path.join(self.out, "run")
        os.mkdir(folder, 0o700)
        lst = Listener(os.path.join(folder, "agent.sock"))
        self.addCleanup(lst.close)
        r = self.serve({"PROFILEMATE_SOCKET": lst.path})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        wait_for(lambda: len(lst.of("bye")) == 4, 30, "four bye lines")
        # One process per (pid, instance); a process whose send timed out on a loaded machine
        # reconnects and says hello again ("reconnects": n), redacted the same way.
        hellos = lst.of("hello")
        self.assertEqual(len({(m["pid"], m["instance"]) for m in hellos}), 4, hellos)
        self.assertEqual(sorted(m["reconnects"] for m in hellos)[:4], [0, 0, 0, 0], hellos)
        flat = repr(lst.lines)
        self.assertNotIn(API_KEY, flat)
        self.assertNotIn(HF_TOKEN, flat)
        self.assertIn(redact.REDACTED, lst.of("hello")[0]["argv"])


if __name__ == "__main__":
    unittest.main()
