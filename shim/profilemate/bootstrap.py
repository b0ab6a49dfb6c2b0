"""The names entry roads and older installs use: `import profilemate.bootstrap as b;
b.bootstrap("pth")` (the .pth line pmagent install wrote before the activation moved into the
package) and the `vllm.general_plugins` entry point `profilemate.bootstrap:vllm_plugin`.

The activation itself lives in profilemate/__init__.py, so that a process that never imports vLLM
loads two modules of the shim at start, not three.
"""
from profilemate import (VllmFinder, activate as bootstrap, decision, finder, install_finder,  # noqa: F401
                         state, uninstall_finder, vllm_plugin)
