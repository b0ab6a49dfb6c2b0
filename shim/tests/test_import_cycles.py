"""No import cycle inside shim/profilemate, counting function-local imports (issue 17).

Walks every `import`/`from ... import` statement of every module with ast (at any depth, so
imports inside functions count) and fails on any cycle among profilemate's modules.
"""
import ast
import os
import unittest

from tests import helpers as h

PKG = os.path.join(h.SHIM, "profilemate")


def module_names():
    """{dotted name: path} of every module under shim/profilemate."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, h.SHIM)[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"):
                rel = rel[:-len(".__init__")]
            out[rel] = path
    return out


def imports_of(name, path, known):
    """The profilemate modules `name` imports anywhere in its file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = base + "." + a.name
                if sub in known:
                    found.add(sub)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


class ImportCycles(unittest.TestCase):
    def graph(self):
        known = module_names()
        return {n: imports_of(n, p, known) for n, p in known.items()}

    def test_walker_sees_function_local_imports(self):
        g = self.graph()
        self.assertIn("profilemate.runtime", g["profilemate"])  # imported inside _start()
        self.assertIn("profilemate.targets", g["profilemate"])  # inside _target_names()

    def test_no_cycles(self):
        found = cycles(self.graph())
        self.assertEqual(found, [], "import cycles: %s" % found)

    def test_cycle_detection_fails_on_a_cycle(self):
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])


if __name__ == "__main__":
    unittest.main()
