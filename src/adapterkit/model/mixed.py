"""Mixed-adapter batches: one adapter name per row, "__base__" for none.

The names become one tensor of row ids for the duration of the call; every
adapted module gathers its per-row factors from it (core.layer._mixed_delta).
The call's routing is private to the calling thread / asyncio task (a context
variable, see core.routing): nothing shared is written, so several threads can
run their own batches on one model at once.
"""

from __future__ import annotations

import contextlib

import torch

from adapterkit.core.routing import BASE_ID, AdapterRouting, Route
from adapterkit.errors import AdapterStateError, UnknownAdapterError

BASE_ROW = "__base__"


@contextlib.contextmanager
def mixed_rows(model, adapter_names: list[str], rows: int | None):
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list with one adapter name per row, got {type(adapter_names).__name__}.")
    if rows is not None and len(adapter_names) != rows:
        raise ValueError(
            f"adapter_names has {len(adapter_names)} names but the batch has {rows} rows; give one name per row "
            f"({BASE_ROW!r} for rows that should use no adapter)."
        )
    known = model.peft_config
    unknown = sorted({n for n in adapter_names if n != BASE_ROW and n not in known})
    if unknown:
        raise UnknownAdapterError(
            f"adapter_names holds {unknown}, which are not loaded; loaded adapters: {sorted(known)}. "
            f"Use {BASE_ROW!r} for base rows."
        )
    merged = model.merged_adapters
    if merged:
        raise AdapterStateError(
            f"Adapters {merged} are merged into the base weights, so every row would get them. "
            "Call unmerge_adapter() before a mixed-adapter batch."
        )
    if model.training:
        raise AdapterStateError("Mixed-adapter batches are for inference; call model.eval() first.")
    routing = model.routing
    with routing.call(route_for(routing, adapter_names, _first_device(model))):
        yield


def route_for(routing: AdapterRouting, adapter_names: list[str], device: torch.device) -> Route:
    """The Route that runs row i with adapter_names[i] (names already checked).

    Named rows run their adapters even under disable_adapters(), and base rows never
    run one: the call says exactly what each row uses, whatever the model-wide state.
    """
    distinct = frozenset(adapter_names)
    if len(distinct) == 1:
        # Every row shares one adapter (or none): the single-adapter path gives the same
        # numbers without gathering per-row factors.
        (only,) = distinct
        return Route(active=(), disabled=True) if only == BASE_ROW else Route(active=(only,))
    ids = [BASE_ID if n == BASE_ROW else routing.ids[n] for n in adapter_names]
    return Route(row_ids=torch.tensor(ids, dtype=torch.long, device=device), row_names=distinct)


def _first_device(model) -> torch.device:
    """Where the row ids are made (each layer moves them to its own device if it differs); not
    meta, where accelerate keeps offloaded weights between forwards."""
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")
