"""AdapterReplica: one Ray Serve replica running the whole `adapterkit serve` engine.

Each replica holds the base model, the engine thread (continuous mixed-adapter batching)
and the adapter set of a single server (ServerState), and answers the HTTP requests the
ingress forwards through the single server's own app (build_app, called in-process).

Which adapters a replica keeps is Ray's multiplexing: the ingress tags each request with
its adapter (`multiplexed_model_id`), Ray's router sends it to a replica that holds that
adapter, and here `serve.multiplexed` loads it on a miss (from the store: `name@tag`
refs resolve on whichever replica needs them) and evicts the least recently used one
beyond `max_adapters_per_replica`. The multiplexer holds a lease on each adapter it keeps,
so the server's own LRU never evicts it behind Ray's back, and an evicted adapter's
weights go only once the requests using them end.
"""

from __future__ import annotations

import json
import os

from ray import serve

from adapterkit.integrations.ray.asgi_call import HttpRequest, ResponseStart, call_asgi
from adapterkit.integrations.ray.counters import ReplicaCounters
from adapterkit.integrations.ray.options import RayServeOptions
from adapterkit.serve.errors import ServeError


class HeldAdapter:
    """An adapter the multiplexer keeps on this replica: a lease that pins it until evicted."""

    def __init__(self, replica: AdapterReplica, model_id: str, lease) -> None:
        self.replica, self.model_id, self.lease = replica, model_id, lease
        # serve.multiplexed awaits `model.__del__()` when its LRU evicts a model. An instance
        # attribute, so the garbage collector (which looks `__del__` up on the class) never runs it.
        self.__del__ = self._evict

    async def _evict(self) -> None:
        replica = self.replica
        replica.counters.evictions += 1
        replica.held.pop(self.model_id, None)
        adapters = replica.state.adapters
        adapters.release(self.lease)
        key = self.lease.resident.key
        if key in adapters.resident and key not in adapters.named:
            await adapters.unload(key)  # freed now, or when the requests using it end


class AdapterReplica:
    def __init__(self, options: RayServeOptions) -> None:
        import torch

        from adapterkit.hf import load_base
        from adapterkit.serve import ServerState, build_app
        from adapterkit.threads import configure_threads

        configure_threads(max(1, int(options.replica_cpus)))  # Ray's CPU share, never OpenMP's guess
        model, tokenizer = load_base(options.base, dtype=getattr(torch, options.dtype))
        config = options.serve_config()
        self.state = ServerState(model, tokenizer, config, open_store(options))
        self.app = build_app(model, tokenizer, config, self.state.store, state=self.state)
        self.state.engine.start()  # build_app's lifespan would; here no server runs it
        context = serve.get_replica_context()
        self.counters = ReplicaCounters(replica=context.replica_id.unique_id, pid=os.getpid())
        self.held: dict[str, HeldAdapter] = {}  # model id -> held adapter, as the multiplexer keeps them

        async def load(model_id: str) -> HeldAdapter:  # a plain function: Ray keeps its LRU on it
            return await self._load_adapter(model_id)

        self._adapter = serve.multiplexed(max_num_models_per_replica=options.max_adapters_per_replica)(load)

    async def _load_adapter(self, model_id: str) -> HeldAdapter:
        """serve.multiplexed's loader: load `model_id` (a store ref or a folder-backed name) and pin it."""
        self.counters.loading.append(model_id)
        try:
            lease = await self.state.adapters.acquire(model_id)
        except Exception:
            self.counters.load_failures += 1
            raise
        finally:
            self.counters.loading.remove(model_id)
        self.counters.loads += 1
        held = self.held[model_id] = HeldAdapter(self, model_id, lease)
        return held

    async def forward(self, request: HttpRequest):
        """Answer one forwarded HTTP request: a ResponseStart, then body chunks."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            self.counters.requests += 1
            if model_id in self.held:
                self.counters.hits += 1
                self.held[model_id] = self.held.pop(model_id)  # most recently used last, as Ray's LRU
            try:
                await self._adapter(model_id)
            except ServeError as exc:  # 404 unknown adapter, 400 one that does not load, ...
                payload = json.dumps(exc.body()).encode()
                yield ResponseStart(exc.status, ((b"content-type", b"application/json"),
                                                 *((k.lower().encode(), v.encode()) for k, v in exc.headers.items())))
                yield payload
                return
        else:
            self.counters.base_requests += 1
        async for part in call_asgi(self.app, request):
            yield part

    async def record_routing_stats(self) -> dict:
        """Ray Serve's hook for per-replica routing stats: this replica's counters."""
        self.counters.held = list(self.held)
        return self.counters.as_dict()

    def __del__(self) -> None:
        state = getattr(self, "state", None)
        if state is not None:
            state.engine.stop()


def open_store(options: RayServeOptions):
    """The AdapterStore the options name, or None (no store refs then)."""
    if options.store is None:
        return None
    from adapterkit.store import AdapterStore, default_store_root

    root = options.store or None
    if options.store_url:
        return AdapterStore(options.store_url, blobs=os.path.join(root or default_store_root(), "blobs"))
    return AdapterStore(root)
