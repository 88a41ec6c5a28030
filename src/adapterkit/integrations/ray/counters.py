"""ReplicaCounters: what one replica tells about its adapters, and reading them from every replica.

Each replica counts, for requests naming an adapter through the multiplexed model id:
`requests`; `hits`, those that found the adapter already loaded on this replica;
`loads` and `load_failures`; `evictions` (Ray's multiplexing LRU unloading one). With them
the hit rate of Ray's routing is measured where it happens, not inferred from latency.

Replicas report them through Ray Serve's `record_routing_stats` hook (the stats a custom
request router sees). `replica_counters` reads them from every live replica of a deployment
directly, replica by replica (a call through a DeploymentHandle would reach only the one
its router picks, and never a replica busy loading).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Ray Serve names each replica actor "SERVE_REPLICA::<app>#<deployment>#<id>" in namespace "serve".
REPLICA_ACTOR_PREFIX = "SERVE_REPLICA::"
SERVE_NAMESPACE = "serve"


@dataclass
class ReplicaCounters:
    replica: str  # Ray Serve's replica id
    pid: int
    requests: int = 0  # requests naming an adapter (a multiplexed model id)
    hits: int = 0  # ... that found it already loaded here
    base_requests: int = 0  # requests for the base or a start-up adapter (loaded on every replica)
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    loading: list[str] = field(default_factory=list)  # model ids whose load is in progress
    held: list[str] = field(default_factory=list)  # model ids loaded, least recently used first

    def as_dict(self) -> dict:
        return asdict(self)


def replica_counters(app_name: str, deployment: str = "AdapterReplica", timeout_s: float = 10.0) -> list[dict]:
    """Every serving replica's counters (a dict per replica, ReplicaCounters' fields), from a Ray driver
    connected to the cluster. A replica still starting, or dying, is left out."""
    import ray

    prefix = f"{REPLICA_ACTOR_PREFIX}{app_name}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == SERVE_NAMESPACE and a["name"].startswith(prefix)]
    pending: dict[str, Any] = {}
    for name in names:
        try:
            pending[name] = ray.get_actor(name, namespace=SERVE_NAMESPACE).record_routing_stats.remote()
        except ValueError:  # gone between the listing and the lookup
            continue
    out = []
    for ref in pending.values():
        try:
            stats = ray.get(ref, timeout=timeout_s)
        except ray.exceptions.RayError:  # not initialized yet (RayTaskError), dead (RayActorError), timed out
            continue
        if stats:
            out.append(stats)
    return sorted(out, key=lambda s: s["replica"])
