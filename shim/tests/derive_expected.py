"""Derives shim/tests/expected/<era>.json from testbed/targets.json and the shim's targets.

A target must be `patched` in an era when at least one of its paths is patchable there:
the path's module exists in that era of targets.json, the hook's class is defined in it (a
class, not a function such as the FusedMoEFactory-era `FusedMoE`), and every non-optional
hook's method (or one of its alternatives) is defined on that class or on one of its bases
recorded anywhere in the era. A path whose hooks are all optional needs one of them.

Run from the repository root:  python3 shim/tests/derive_expected.py [--check]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "shim"))

ERAS = {"v0_7_3": "v0.7.3", "v0_10_2": "v0.10.2", "v0_11_0": "v0.11.0", "v0_16_0": "v0.16.0", "main_2026_08_20": "main-2026-08-20"}


def _classes(era_doc):
    """module -> {class: (methods, bases)}, plus a global class index for base lookup."""
    mods, index = {}, {}
    for entry in era_doc.values():
        if not isinstance(entry, dict) or not entry.get("exists") or "module" not in entry:
            continue
        classes = {}
        for cname, c in (entry.get("classes") or {}).items():
            classes[cname] = (set(c.get("methods", {})), list(c.get("bases", [])))
            index.setdefault(cname, classes[cname])
        mods.setdefault(entry["module"], {}).update(classes)
    return mods, index


def _has_method(cname, method, classes, index, seen=None):
    seen = seen or set()
    if cname in seen:
        return False
    seen.add(cname)
    c = classes.get(cname) or index.get(cname)
    if c is None:
        return False
    methods, bases = c
    if method in methods:
        return True
    return any(_has_method(b, method, index, index, seen) for b in bases)


def patchable(path, mods, index):
    classes = mods.get(path.module)
    if classes is None:
        return False
    found_optional = False
    for hook in path.hooks:
        names = hook.method if isinstance(hook.method, tuple) else (hook.method,)
        ok = hook.cls in classes and any(_has_method(hook.cls, n, classes, index) for n in names)
        if hook.optional:
            found_optional = found_optional or ok
        elif not ok:
            return False
    return any(not h.optional for h in path.hooks) or found_optional


def derive(targets_json):
    from profilemate import targets
    with open(targets_json) as f:
        doc = json.load(f)
    out = {}
    for folder, key in ERAS.items():
        mods, index = _classes(doc[key])
        out[folder] = sorted(t.name for t in targets.all_targets()
                             if any(patchable(p, mods, index) for p in t.paths))
    return out


def main():
    derived = derive(os.path.join(ROOT, "testbed", "targets.json"))
    check = "--check" in sys.argv
    bad = 0
    for folder, names in derived.items():
        path = os.path.join(HERE, "expected", folder + ".json")
        body = json.dumps({"era": folder, "targets_json_key": ERAS[folder], "patched": names}, indent=1) + "\n"
        if check:
            with open(path) as f:
                if f.read() != body:
                    print("stale: %s" % path)
                    bad = 1
        else:
            with open(path, "w") as f:
                f.write(body)
    return bad


if __name__ == "__main__":
    sys.exit(main())
