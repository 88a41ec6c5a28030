"""vLLM deployment: will vLLM 0.33 load a folder (rules), a lossless conversion (export),
and a LoRA resolver that serves adapters from an AdapterStore (resolver).

`rules` and `export` never import vLLM; `resolver` does, so it is imported only by
`register`, the `vllm.general_plugins` entry point, which vLLM itself calls.
"""

from __future__ import annotations


def register() -> None:
    """Entry point (pyproject: [project.entry-points."vllm.general_plugins"] adapterkit)."""
    from adapterkit.integrations.vllm.resolver import register as register_resolver

    register_resolver()
