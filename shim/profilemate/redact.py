"""The one redaction list: secrets never leave the process (issue 16).

Applied by the shim to everything it sends or writes about the process (argv in metadata.json,
the agent hello, the environment excerpt). A name is secret when one of its words (split on
`-`, `_`, `.`) is in SECRET_WORDS, ends in one of SECRET_SUFFIXES, or starts with `auth`, or
when it is one of vLLM's known secret flags or variables (KNOWN_FLAGS, KNOWN_ENV; from vLLM's
`vllm/entrypoints/openai/cli_args.py`, `vllm/engine/arg_utils.py` and `vllm/envs.py`).
`--max-num-batched-tokens` or `--tokenizer` stay readable: "tokens" and "tokenizer" are not
secret words.
"""
import re

REDACTED = "<redacted>"

SECRET_WORDS = frozenset((
    "key", "token", "secret", "password", "passwd", "pwd", "passphrase", "credential",
    "credentials", "auth", "cookie", "apikey", "private",
))
SECRET_SUFFIXES = ("key", "token", "secret", "password", "passwd", "credential", "credentials")
# Flags of `vllm serve` whose value is a secret (their names match the words too; listed so a
# change of the word rules cannot drop them).
KNOWN_FLAGS = frozenset(("--api-key", "--hf-token", "--ssl-keyfile-password"))
KNOWN_ENV = frozenset((
    "VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "OPENAI_API_KEY",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
    "S3_ACCESS_KEY_ID", "WANDB_API_KEY", "MODELSCOPE_API_TOKEN", "VLLM_S3_SECRET", "NGC_API_KEY",
))
_SPLIT = re.compile(r"[-_.]+")
# Words that contain a secret suffix without being one.
_NOT_SECRET = frozenset(("keyfile", "tokens", "tokenizer", "monkey", "hotkey"))


def is_secret_name(name):
    """True when an option or variable name (`--api-key`, `HF_TOKEN`, `db.password`) names a secret."""
    if not name:
        return False
    if name in KNOWN_FLAGS or name.upper() in KNOWN_ENV:
        return True
    for word in _SPLIT.split(name.strip("-").lower()):
        if not word or word in _NOT_SECRET:
            continue
        if word in SECRET_WORDS or word.startswith("auth") or word.endswith(SECRET_SUFFIXES):
            return True
    return False


def argv(args):
    """A copy of argv with every secret value replaced: `--api-key=S` and `--api-key S` (the next
    word, unless it is itself an option), and `NAME=S` words (an environment prefix)."""
    out = []
    hide_next = False
    for a in args:
        a = str(a)
        if hide_next:
            hide_next = False
            if not a.startswith("-") or a == "-":
                out.append(REDACTED)
                continue
        if a.startswith("-") and len(a) > 1:
            name, eq, _ = a.partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(name + "=" + REDACTED)
                    continue
                hide_next = True
            out.append(a)
            continue
        name, eq, _ = a.partition("=")
        if eq and name and "/" not in name and " " not in name and is_secret_name(name):
            out.append(name + "=" + REDACTED)
            continue
        out.append(a)
    return out


def env(environ):
    """A copy of a name→value mapping with every secret value replaced."""
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in environ.items()}


def text(s, secrets):
    """`s` with each of the given secret values (at least 4 characters) replaced."""
    for v in secrets:
        if v and len(v) >= 4 and v in s:
            s = s.replace(v, REDACTED)
    return s
