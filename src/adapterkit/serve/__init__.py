"""`adapterkit serve`: an OpenAI-compatible server for many adapters over one base.

    from adapterkit.serve import ServeConfig, build_app
    app = build_app(model, tokenizer, ServeConfig(base_name="smollm2", adapters={"reverse": "out/reverse"}))

Modules, inner to outer: kv_cache (the preallocated per-row KV cache), sampling,
engine (the one thread that owns the model: continuous batching), protocol (request
bodies), combinations (a request's `merged_adapters` as a cacheable definition),
adapters (the resident set: leases, LRU, hot load/unload/replace, combinations built
once per definition), text (detokenizing, stop strings), generation (one request's
sequences), errors / limits / metrics, config and state (what one server holds), app
(the routes).
Names resolve on first use, so the CLI can check options without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"ServeConfig": "adapterkit.serve.config", "ServerState": "adapterkit.serve.state",
            "build_app": "adapterkit.serve.app"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterkit.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
