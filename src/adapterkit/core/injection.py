"""Attach LoRA to a user's model without changing its classes or its keys.

Each targeted module gets a child `lora` (a LoraAdapters) and a forward hook
that adds the adapters' output. Removing both gives back the untouched module,
which is all `unload()` needs.

Modules listed in `modules_to_save` (a classifier head, say) are trained as a
whole: they are swapped for a ModulesToSave that keeps the original and one
copy per adapter. That is the one place where keys change
(`score.weight` -> `score.original_module.weight`); io.keys translates it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from adapterkit.core.kinds import KINDS, ModuleKind
from adapterkit.core.layer import LoraAdapters
from adapterkit.core.routing import AdapterRouting, Route

LORA_CHILD = "lora"


def _lora_hook(module: nn.Module, args, output):
    lora: LoraAdapters = getattr(module, LORA_CHILD)
    return lora(args[0], output)


def attach(module: nn.Module, kind: ModuleKind | str, routing: AdapterRouting) -> LoraAdapters:
    """The module's LoraAdapters, created (with its hook) on first use. `kind` is a
    core.kinds.ModuleKind or its name ("linear", "conv1d", "embedding", "quantized_linear")."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    existing = getattr(module, LORA_CHILD, None)
    if isinstance(existing, LoraAdapters):
        return existing
    if existing is not None:
        raise ValueError(f"{type(module).__name__} already has an attribute {LORA_CHILD!r}; cannot attach LoRA.")
    adapters = LoraAdapters(module, kind, routing)
    module.add_module(LORA_CHILD, adapters)
    adapters.__dict__["_hook"] = module.register_forward_hook(_lora_hook)
    return adapters


def detach(module: nn.Module) -> None:
    adapters = getattr(module, LORA_CHILD, None)
    if isinstance(adapters, LoraAdapters):
        adapters.__dict__["_hook"].remove()
        delattr(module, LORA_CHILD)


def walk(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None):
    """`model.named_modules()`, or a snapshot of it taken earlier (see model.ModuleSnapshot):
    walking a large model in Python costs milliseconds, and loads would pay it many times."""
    return modules if modules is not None else model.named_modules()


def lora_modules(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None) -> dict[str, LoraAdapters]:
    """Base-module name -> its LoraAdapters, in model order."""
    suffix = "." + LORA_CHILD
    return {
        name[: -len(suffix)] if name.endswith(suffix) else "": module
        for name, module in walk(model, modules)
        if isinstance(module, LoraAdapters)
    }


class ModulesToSave(nn.Module):
    """A module trained in full per adapter: the original plus one copy per adapter.

    The first active adapter that has a copy decides which one runs; with none
    active (or adapters disabled) the original runs.
    """

    def __init__(self, original: nn.Module, routing: AdapterRouting) -> None:
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.routing = routing

    def add(self, name: str, trainable: bool = True) -> None:
        copied = copy.deepcopy(self.original_module)
        for param in copied.parameters():
            param.requires_grad_(trainable)
        self.modules_to_save[name] = copied

    def remove(self, name: str) -> None:
        del self.modules_to_save[name]

    def chosen(self, route: Route | None = None) -> nn.Module:
        route = self.routing.current() if route is None else route
        if not route.disabled:
            for name in route.active:
                if name in self.modules_to_save:
                    return self.modules_to_save[name]
        return self.original_module

    def forward(self, *args, **kwargs):
        route = self.routing.current()  # this call's own routing, or the model-wide one
        row_ids = route.row_ids
        if row_ids is None or route.disabled or not len(self.modules_to_save):
            return self.chosen(route)(*args, **kwargs)
        return self._mixed(row_ids, *args, **kwargs)

    def _mixed(self, row_ids: torch.Tensor, x: torch.Tensor, *args, **kwargs):
        # Whole-module copies cannot be gathered per row; run each distinct
        # module once on its rows. Heads are small, and these are few.
        out = self.original_module(x, *args, **kwargs)
        by_id = {self.routing.ids[n]: n for n in self.modules_to_save}
        for row_id in row_ids.unique().tolist():
            name = by_id.get(row_id)
            if name is not None:
                rows = (row_ids == row_id).nonzero().squeeze(1)
                out = out.index_copy(0, rows, self.modules_to_save[name](x.index_select(0, rows), *args, **kwargs))
        return out


def swap_in_modules_to_save(model: nn.Module, name: str, routing: AdapterRouting) -> ModulesToSave:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    current = getattr(parent, child)
    if isinstance(current, ModulesToSave):
        return current
    wrapper = ModulesToSave(current, routing)
    setattr(parent, child, wrapper)
    return wrapper


def swap_out_modules_to_save(model: nn.Module, name: str, keep: str | None = None) -> nn.Module:
    """Put back the original (or the copy of adapter `keep`, for merge_and_unload)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    wrapper = getattr(parent, child)
    restored = wrapper.modules_to_save[keep] if keep in wrapper.modules_to_save else wrapper.original_module
    setattr(parent, child, restored)
    return restored
