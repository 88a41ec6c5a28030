"""`adapterkit serve`: an OpenAI-compatible server for many adapters over one base.

    from adapterkit.serve import ServeConfig, build_app
    app = build_app(model, tokenizer, ServeConfig(base_name="smollm2", adapters={"reverse": "out/reverse"}))

Modules, inner to outer: kv_cache (the preallocated per-row KV cache), sampling,
engine (the one thread that owns the model: continuous batching), adapters (the
resident set: leases, LRU, hot load/unload/replace), text (detokenizing, stop
strings), generation (one request's sequences), protocol (request bodies),
errors / limits / metrics, state (what one server holds), app (the routes).
"""

from adapterkit.serve.app import build_app
from adapterkit.serve.state import ServeConfig, ServerState

__all__ = ["ServeConfig", "ServerState", "build_app"]
