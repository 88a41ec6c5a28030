"""ServerState: what one server holds, built before its port opens."""

from __future__ import annotations

from adapterkit.serve.adapters import ResidentAdapters
from adapterkit.serve.config import ServeConfig
from adapterkit.serve.engine import Engine
from adapterkit.serve.metrics import ServerMetrics


class ServerState:
    """The engine, the adapter set and the metrics of one server.

    Building it loads the start-up adapters (raising on the first that fails), so a
    server whose adapters do not load never opens its port.
    """

    def __init__(self, model, tokenizer, config: ServeConfig, store=None) -> None:
        from adapterkit.model.adapter_model import AdapterModel

        config.check()
        if not isinstance(model, AdapterModel):
            model = AdapterModel(model)
        model.eval()
        self.model, self.tokenizer, self.config, self.store = model, tokenizer, config, store
        self.engine = Engine(model, max_batch=config.max_batch, max_model_len=config.max_model_len,
                             max_queue=config.max_queue, eos_token_ids=_eos_ids(model, tokenizer))
        self.adapters = ResidentAdapters(self.engine.call, base_name=config.base_name,
                                         max_loras=config.max_loras, store=store)
        self.adapters.load_startup(dict(config.adapters))
        self.metrics = ServerMetrics(self.engine, self.adapters)
        self.draining = False

    def begin_drain(self) -> None:
        """From now on new requests get 503; those in flight finish."""
        self.draining = True


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
