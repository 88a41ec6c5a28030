"""Ray Serve replicas of `adapterkit serve`: N replicas of the serving engine behind one OpenAI API,
with Ray's model multiplexing keyed by adapter.

Modules, inner to outer: options (what to deploy; no Ray import), counters (per-replica hit /
load / eviction counts, and reading them from every replica), asgi_call (a forwarded request
through the single server's app, in-process), replica (AdapterReplica: the engine, and
`serve.multiplexed` loading adapters from the store), ingress (OpenAIIngress: `model` ->
multiplexed id, a dead replica -> an OpenAI error), deployment (the Serve application and
`app_builder` for `serve run`), launch (`adapterkit serve --replicas N`: start or join a cluster).

Ray is an optional extra (`pip install "adapterkit[ray]"`); names resolve on first use, so
importing this package does not import Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"RayServeOptions": "adapterkit.integrations.ray.options",
            "build_application": "adapterkit.integrations.ray.deployment",
            "app_builder": "adapterkit.integrations.ray.deployment",
            "replica_counters": "adapterkit.integrations.ray.counters",
            "serve_replicas": "adapterkit.integrations.ray.launch"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterkit.integrations.ray' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
