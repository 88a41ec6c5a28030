"""An adapter's tensors, in memory <-> on disk (via io.keys), for one AdapterModel."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from adapterkit.core.config import LoraConfig
from adapterkit.core.injection import ModulesToSave, lora_modules, walk
from adapterkit.io import keys


def saved_wrappers(model: nn.Module, modules=None) -> dict[str, ModulesToSave]:
    return {name: m for name, m in walk(model, modules) if isinstance(m, ModulesToSave)}


def bias_modules(model: nn.Module, config: LoraConfig, adapter: str) -> dict[str, nn.Module]:
    """Modules whose bias the adapter trains, by path."""
    if config.bias == "none":
        return {}
    loras = lora_modules(model)
    if config.bias == "lora_only":
        picked = {path: lora.base for path, lora in loras.items() if lora.has(adapter)}
    else:  # "all": every bias outside adapter-owned modules
        inside = {f"{p}.{s}" for p, w in saved_wrappers(model).items() for s, _ in w.named_modules() if s}
        picked = {
            name: module for name, module in model.named_modules()
            if name not in inside and not isinstance(module, ModulesToSave)
            and isinstance(getattr(module, "bias", None), nn.Parameter)
        }
    return {p: m for p, m in picked.items() if isinstance(getattr(m, "bias", None), torch.Tensor)}


def adapter_tensors(model: nn.Module, config: LoraConfig, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed as PEFT writes them."""
    out: dict[str, torch.Tensor] = {}
    loras = lora_modules(model)
    for path, lora in loras.items():
        if lora.has(adapter):
            for role, tensor in lora.tensors_of(adapter).items():
                out[keys.factor_key(path, lora.kind.name, role)] = tensor
    for path, wrapper in saved_wrappers(model).items():
        if adapter in wrapper.modules_to_save:
            for param, tensor in wrapper.modules_to_save[adapter].state_dict().items():
                out[keys.saved_key(path, param)] = tensor
    for path, module in bias_modules(model, config, adapter).items():
        out[keys.bias_key(path, lora_wrapped=path in loras)] = cast(torch.Tensor, module.bias)
    return out
