"""The era trees have the module paths, classes, methods and parameter lists of targets.json."""
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conformance  # noqa: E402


class ConformanceTest(unittest.TestCase):
    def test_every_era_matches_targets(self):
        targets = conformance.load_targets()
        for era, folder in conformance.ERAS.items():
            with self.subTest(era=era):
                root = os.path.join(conformance.TESTBED, "eras", folder)
                problems = conformance.check_tree(era, root, targets=targets)
                self.assertEqual(problems, [], "\n".join(problems[:40]))

    def test_renamed_parameter_is_caught(self):
        src = os.path.join(conformance.TESTBED, "eras", "v0_16_0")
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "v0_16_0")
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            path = os.path.join(dst, "vllm", "v1", "core", "block_pool.py")
            with open(path) as f:
                text = f.read()
            altered = re.sub(r"def get_new_blocks\(self, num_blocks\)", "def get_new_blocks(self, n_blocks)", text)
            self.assertNotEqual(altered, text, "the tree no longer has get_new_blocks(self, num_blocks)")
            with open(path, "w") as f:
                f.write(altered)
            problems = conformance.check_tree("v0.16.0", dst)
            self.assertTrue(any("BlockPool.get_new_blocks params" in p for p in problems), problems)

    def test_present_module_that_must_be_absent_is_caught(self):
        src = os.path.join(conformance.TESTBED, "eras", "v0_10_2")
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "v0_10_2")
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            # v0.10.2 has no router package; adding one must fail.
            d = os.path.join(dst, "vllm", "model_executor", "layers", "fused_moe", "router")
            os.makedirs(d)
            for name in ("__init__.py", "base_router.py"):
                open(os.path.join(d, name), "w").close()
            problems = conformance.check_tree("v0.10.2", dst)
            self.assertTrue(any("must be absent" in p for p in problems), problems)

    def test_staticmethod_kind_is_checked(self):
        src = os.path.join(conformance.TESTBED, "eras", "v0_10_2")
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "v0_10_2")
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            path = os.path.join(dst, "vllm", "model_executor", "layers", "fused_moe", "layer.py")
            with open(path) as f:
                text = f.read()
            altered = text.replace("    @staticmethod\n    def select_experts(", "    def select_experts(", 1)
            self.assertNotEqual(altered, text)
            with open(path, "w") as f:
                f.write(altered)
            problems = conformance.check_tree("v0.10.2", dst)
            self.assertTrue(any("select_experts is function, want staticmethod" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
