"""RayServeOptions: what a Ray Serve deployment of adapterkit runs (no Ray or torch import here).

One dataclass feeds both ways of deploying: `adapterkit serve --replicas N` builds it from
its arguments, and `serve run adapterkit.integrations.ray:app_builder key=value ...` from
Ray's `key=value` strings (`from_strings`). Every replica builds the same single-server
engine from it (`serve_config`), so a replica answers exactly as `adapterkit serve` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from adapterkit.errors import RayServeOptionError
from adapterkit.serve.config import ServeConfig, served_name

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RayServeOptions:
    base: str = "smollm2"  # 'smollm2', a transformers folder, or a hub id; every replica loads it
    served_model_name: str | None = None  # the base's name in requests (default: as `adapterkit serve`)
    store: str | None = None  # store root for `name@tag` refs; "" is the default root; None: no store
    store_url: str | None = None  # a postgresql:// index shared by hosts (files under STORE/blobs)
    adapters: dict[str, str] = field(default_factory=dict)  # NAME -> folder, loaded on every replica at start
    replicas: int = 2
    max_adapters_per_replica: int = 8  # serve.multiplexed's LRU bound: store refs one replica keeps loaded
    max_batch: int = 16
    max_model_len: int = 1024
    max_queue: int = 256
    api_key: str | None = None
    dtype: str = "float32"
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica (a fraction packs replicas on small hosts)
    health_check_period_s: float = 2.0  # how soon Ray notices a dead replica and starts its replacement
    request_timeout_s: float = 600.0  # the ingress's bound on waiting for a replica's next bytes
    app_name: str = "adapterkit"

    @property
    def base_name(self) -> str:
        return self.served_model_name or served_name(self.base)

    def serve_config(self) -> ServeConfig:
        """The single-server settings every replica runs. Room beyond what Ray's LRU keeps (it pins
        those): a request's `merged_adapters` sources and their combination, and one more, so a store
        tag that moved to a new version still loads while the old one is held. (Slots cost nothing
        until used.)"""
        from adapterkit.serve.protocol import MAX_MERGED_ADAPTERS  # imports torch: replicas only

        room = MAX_MERGED_ADAPTERS + 1
        return ServeConfig(base_name=self.base_name, adapters=dict(self.adapters),
                           max_loras=self.max_adapters_per_replica + len(self.adapters) + room,
                           max_batch=self.max_batch, max_model_len=self.max_model_len, max_queue=self.max_queue,
                           api_key=self.api_key, base_root=str(self.base))

    def check(self) -> None:
        """Refuse bad values before Ray starts anything (RayServeOptionError names the option)."""
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise RayServeOptionError(f"replicas must be an integer >= 1, got {self.replicas!r}; pass --replicas 2")
        if not isinstance(self.max_adapters_per_replica, int) or self.max_adapters_per_replica < 1:
            raise RayServeOptionError(f"max_adapters_per_replica must be an integer >= 1, got "
                                      f"{self.max_adapters_per_replica!r}")
        for name in ("replica_cpus", "health_check_period_s", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise RayServeOptionError(f"{name} must be a number > 0, got {value!r}")
        if self.dtype not in DTYPES:
            raise RayServeOptionError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.store_url is not None and self.store is None:
            raise RayServeOptionError("store_url keeps only the index: pass store=ROOT as well (its blobs/ folder "
                                      "holds the files, on a path every host reaches)")
        try:
            self.serve_config().check()
        except ValueError as exc:
            raise RayServeOptionError(str(exc)) from exc

    @classmethod
    def from_strings(cls, args: dict[str, str]) -> RayServeOptions:
        """Options from `serve run ... key=value` arguments (all strings); `adapters=a=DIR,b=DIR`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, raw in args.items():
            if key not in fields:
                raise RayServeOptionError(f"unknown option {key!r}; the options are {', '.join(sorted(fields))}")
            values[key] = _parse(key, str(raw), fields[key].type)
        options = cls(**values)  # type: ignore[arg-type]
        options.check()
        return options


def _parse(key: str, raw: str, annotation: object) -> object:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise RayServeOptionError(f"{key}={raw!r} is not a number") from None
    if kind.startswith("dict"):
        adapters: dict[str, str] = {}
        for item in filter(None, raw.split(",")):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise RayServeOptionError(f"adapters={raw!r}: write NAME=DIR[,NAME=DIR...]")
            adapters[name] = path
        return adapters
    return raw
