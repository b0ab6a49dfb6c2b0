"""`python -m profilemate doctor [--json]`: the activation decision, which sitecustomize
Python loads, the V0-engine check, and every target tried against the installed vLLM."""
import importlib
import json
import os
import sys


def _which_sitecustomize():
    import importlib.machinery
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    return getattr(spec, "origin", None) if spec else None


def _v0_warning(version):
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return ""
    if (major, minor) < (0, 8) and os.environ.get("VLLM_USE_V1", "") != "1":
        return ("vLLM %s runs the V0 engine by default, which ProfileMate does not support: "
                "set VLLM_USE_V1=1 or upgrade to vLLM >= 0.8" % version)
    return ""


def _missing(exc, module):
    """True when `exc` says `module` (or a package above it) does not exist, as opposed to a
    module that exists and raised, or one of its own imports missing."""
    if not isinstance(exc, ModuleNotFoundError):
        return False
    name = getattr(exc, "name", None) or ""
    return bool(name) and (module == name or module.startswith(name + "."))


def agent_socket():
    """Which agent socket a shim started here would use, and why the others were passed over:
    (path or '', where, [reasons])."""
    from profilemate import sinks
    named = os.environ.get("PROFILEMATE_SOCKET", "")
    if named == sinks.SOCKET_OFF:
        return "", "PROFILEMATE_SOCKET=off", []
    cands = [(named, "PROFILEMATE_SOCKET")] if named else sinks.agent_candidates()
    reasons = []
    for path, where in cands:
        if not os.path.exists(path):
            reasons.append("%s (%s): none" % (path, where))
            continue
        bad = sinks.check_socket(path)
        if bad:
            reasons.append("%s (%s): %s" % (path, where, bad))
            continue
        return path, where, reasons
    return "", "", reasons


def check():
    """Returns the report as a dict (targets: list of {target, status, reason, module})."""
    import profilemate
    from profilemate import patching, targets
    mode, reason = profilemate.decision()
    report = {"activation": {"mode": mode, "reason": reason},
              "sitecustomize": _which_sitecustomize(), "python": sys.version.split()[0],
              "vllm": "", "warnings": [], "targets": []}
    ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sitecustomize.py")
    if report["sitecustomize"] and os.path.abspath(report["sitecustomize"]) != ours:
        report["warnings"].append("Python loads %s, not ProfileMate's %s (the shim is reached only through "
                                  "the .pth line or the vLLM plugin)" % (report["sitecustomize"], ours))
    try:
        vllm = importlib.import_module("vllm")
        report["vllm"] = getattr(vllm, "__version__", "")
    except Exception as e:
        report["warnings"].append("vllm is not importable: %r" % (e,))
        for t in targets.all_targets():
            report["targets"].append({"target": t.name, "status": "absent", "reason": "vllm not importable",
                                      "module": ""})
        return report
    w = _v0_warning(report["vllm"])
    if w:
        report["warnings"].append(w)
    from profilemate import runtime
    for t in targets.all_targets():
        results = []
        for p in t.paths:
            try:
                mod = importlib.import_module(p.module)
            except Exception as e:
                if _missing(e, p.module):
                    results.append(("absent", "%s not in this vLLM" % p.module, p.module))
                else:
                    results.append(("failed", "%s exists but failed to import: %s: %s" % (
                        p.module, type(e).__name__, e), p.module))
                continue
            entry = {"status": "not_loaded", "reason": "", "handles": [], "paths": {}}
            status, why = runtime._apply_path(t, p, mod, entry)
            if status == "patched":
                # Read from the attribute itself, not from what the wrap call returned.
                gone = ["%s.%s" % (r["hook"].cls, r["method"]) for r in entry["handles"]
                        if r["handle"] is not None and not patching.is_wrapped(r["cls"], r["method"])]
                if gone:
                    status, why = "failed", "wrapping did not take: %s not wrapped after patching" % ", ".join(gone)
            for rec in entry["handles"]:
                if rec["handle"] is not None and rec["handle"].raw is not None:
                    patching.unwrap(rec["handle"])
            results.append((status, why, p.module))
        rank = {"failed": 5, "patched": 4, "disabled": 3, "absent": 2, "not_loaded": 1}
        best = max(results, key=lambda r: rank[r[0]])
        report["targets"].append({"target": t.name, "status": best[0], "reason": best[1], "module": best[2]})
    from profilemate.gpu_timing import POOL
    report["tables"] = targets.table_statuses(report["targets"], cuda=POOL.available())
    return report


def main(argv):
    as_json = "--json" in argv
    import profilemate
    profilemate.uninstall_finder()
    report = check()
    if as_json:
        print(json.dumps(report["targets"], indent=1))
        return 0
    print("activation: %s (%s)" % (report["activation"]["mode"], report["activation"]["reason"]))
    print("sitecustomize Python loads: %s" % (report["sitecustomize"] or "none"))
    print("python %s, vllm %s" % (report["python"], report["vllm"] or "not installed"))
    path, where, passed = agent_socket()
    if path:
        print("agent socket: %s (%s)" % (path, where))
    else:
        print("agent socket: none%s; processes write the standalone folder" % (" (%s)" % where if where else ""))
    for r in passed:
        print("  passed over: %s" % r)
    for w in report["warnings"]:
        print("WARNING: %s" % w)
    for t in report["targets"]:
        print("  %-18s %-10s %s" % (t["target"], t["status"], t["reason"] or t["module"]))
    if report.get("tables"):
        print("tables:")
        for t in report["tables"]:
            print("  %-24s %s" % (t["table"], t["status"]))
    return 1 if any(t["status"] == "failed" for t in report["targets"]) else 0
