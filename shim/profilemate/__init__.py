"""ProfileMate shim: profiles vLLM from inside its processes (standard library only).

Entry roads, all ending in `profilemate.bootstrap.bootstrap`: `sitecustomize.py`, a `.pth`
line, and the `vllm.general_plugins` entry point `profilemate.bootstrap:vllm_plugin`.
"""
__version__ = "1.0.0"
