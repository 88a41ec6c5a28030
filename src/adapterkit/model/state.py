"""Which tensors an adapter has at each module, under which PEFT key: the one owner of that fact.

For a config and the modules it targets, an adapter has:
  - at each module it adapts (LoRA): A and B, and its variant's own tensors (DoRA: the magnitude),
    as core.layer.adapter_tensor_shapes says; keys from io.keys (embeddings: lora_embedding_A/B);
  - at each module it trains in full (modules_to_save): that module's state dict;
  - with bias="lora_only", the bias of each module it adapts; with bias="all", the bias of every
    module of the base outside those it trains in full. A bias counts when it is a parameter or a
    persistent buffer: PEFT writes what the state dict holds, so a non-persistent buffer is the
    base's own. Only parameters are trained (a buffer takes no gradient).

`adapter_layout` lists these for a config, from the base's own module paths, whatever other adapters
have attached meanwhile (so a save reloads onto a fresh base). Everything goes through it:
saving (`adapter_tensors`), loading and verifying (model.loading.check_load), training
(`trained_biases`), and, from keys alone, inspecting (`module_roles`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from adapterkit.core.config import LoraConfig
from adapterkit.core.injection import ModulesToSave, lora_modules, walk
from adapterkit.core.layer import LoraAdapters, adapter_tensor_shapes
from adapterkit.core.targeting import TargetedModule
from adapterkit.core.variants import variant_of
from adapterkit.io import keys

# A tensor's place in the model and its shape, by on-disk key.
Layout = dict[str, tuple[keys.TensorDestination, tuple[int, ...]]]

_ORIGINAL = "original_module"


def saved_wrappers(model: nn.Module, modules=None) -> dict[str, ModulesToSave]:
    return {name: m for name, m in walk(model, modules) if isinstance(m, ModulesToSave)}


def base_module_at(model: nn.Module, path: str) -> nn.Module:
    """The base's own module at `path`: a modules_to_save wrapper stands for the module it replaced."""
    module = model.get_submodule(path)
    return module.original_module if isinstance(module, ModulesToSave) else module


def adapter_bias(module: nn.Module) -> torch.Tensor | None:
    """The module's `bias` when an adapter may carry it: a parameter, or a persistent buffer."""
    if module._parameters.get("bias") is not None:
        return module._parameters["bias"]
    buffer = module._buffers.get("bias")
    if buffer is not None and "bias" not in module._non_persistent_buffers_set:
        return buffer
    return None


def _base_modules(modules) -> dict[str, nn.Module]:
    """The base's modules by their own paths: a wrapper's original stands at the wrapper's path
    (and its submodules below it), per-adapter copies and LoRA containers are left out."""
    wrappers = [name for name, module in modules if isinstance(module, ModulesToSave)]
    out: dict[str, nn.Module] = {}
    for name, module in modules:
        if isinstance(module, LoraAdapters):
            continue
        if isinstance(module, ModulesToSave):
            out[name] = module.original_module
            continue
        wrapper = next((w for w in wrappers if name.startswith(w + ".")), None)
        if wrapper is None:
            out[name] = module
            continue
        rest = name[len(wrapper) + 1:]
        if rest.startswith(_ORIGINAL + "."):  # a submodule of the replaced module, at its own path
            out[f"{wrapper}.{rest[len(_ORIGINAL) + 1:]}"] = module
    return out


def bias_owners(config: LoraConfig, targets: list[TargetedModule], saved_modules: list[str],
                modules) -> dict[str, nn.Module]:
    """Modules whose bias the adapter has, by path (`modules`: the model's named_modules)."""
    if config.bias == "none":
        return {}
    if config.bias == "lora_only":
        candidates = {t.name: t.module for t in targets}
    else:  # "all": outside the modules trained in full (their bias is saved with them)
        candidates = {name: module for name, module in _base_modules(modules).items()
                      if not any(name == s or name.startswith(s + ".") for s in saved_modules)}
    return {path: module for path, module in candidates.items() if adapter_bias(module) is not None}


def adapter_layout(model: nn.Module, config: LoraConfig, targets: list[TargetedModule],
                   saved_modules: list[str], modules=None) -> Layout:
    """Every tensor an adapter with this config has on this base, by PEFT's on-disk key."""
    modules = list(walk(model, modules))
    variant = variant_of(config)
    layout: Layout = {}
    for target in targets:
        rank = config.rank_for(target.name)
        for role, shape in adapter_tensor_shapes(target.kind, target.module, rank, variant).items():
            layout[keys.factor_key(target.name, target.kind.name, role)] = (keys.TensorDestination(role, target.name),
                                                                            shape)
    for path in saved_modules:
        for param, tensor in base_module_at(model, path).state_dict().items():
            layout[keys.saved_key(path, param)] = (keys.TensorDestination("saved", path, param), tuple(tensor.shape))
    # A LoRA'd module's bias sits under PEFT's wrapper: <path>.base_layer.bias.
    adapted = {t.name for t in targets}
    for path, module in bias_owners(config, targets, saved_modules, modules).items():
        bias = cast(torch.Tensor, adapter_bias(module))
        layout[keys.bias_key(path, path in adapted)] = (keys.TensorDestination("bias", path), tuple(bias.shape))
    return layout


def accepted_extras(model: nn.Module, config: LoraConfig, targets: list[TargetedModule], saved_modules: list[str],
                    present) -> Layout:
    """Tensors PEFT writes beside an adapter's own, which a load accepts (when `present`: the
    file's keys) but never requires, and a save never writes:
      - the full base weight of a LoRA'd module (save_embedding_layers, for resized vocabularies):
        it replaces the base's ("base_weight");
      - with bias="all", the biases inside a modules_to_save wrapper, "<m>.modules_to_save.bias" (a
        copy of "<m>.bias") and "<m>.original_module.bias" (the head replaced): unused ("ignored")."""
    present = set(present)
    extras: Layout = {}
    for target in targets:
        key = f"{keys.PREFIX}{target.name}.{keys.WRAPPED_WEIGHT}"
        if key in present:
            shape = tuple(cast(torch.Tensor, target.module.weight).shape)
            extras[key] = (keys.TensorDestination("base_weight", target.name), shape)
    if config.bias == "all":
        for path in saved_modules:
            for param, tensor in base_module_at(model, path).state_dict().items():
                for inner in ("modules_to_save", _ORIGINAL):
                    key = f"{keys.PREFIX}{path}.{inner}.{param}"
                    if param.endswith("bias") and key in present:
                        extras[key] = (keys.TensorDestination("ignored", path, param), tuple(tensor.shape))
    return extras


def bias_aliases(layout: Layout) -> dict[str, str]:
    """PEFT spelling -> layout key, for biases of modules the adapter does not adapt: PEFT writes
    `<path>.base_layer.bias` when another adapter of the saving model had wrapped that module."""
    return {keys.bias_key(dest.module, True): key for key, (dest, _) in layout.items()
            if dest.role == "bias" and key == keys.bias_key(dest.module, False)}


def loaded_targets(model: nn.Module, adapter: str, modules=None) -> tuple[list[TargetedModule], list[str]]:
    """(the modules a loaded adapter adapts, the paths it trains in full)."""
    targets = [TargetedModule(path, lora.base, lora.kind)
               for path, lora in lora_modules(model, modules).items() if lora.has(adapter)]
    saved = [path for path, wrapper in saved_wrappers(model, modules).items() if adapter in wrapper.modules_to_save]
    return targets, saved


def adapter_tensors(model: nn.Module, config: LoraConfig, adapter: str, modules=None) -> dict[str, torch.Tensor]:
    """A loaded adapter's tensors, keyed as PEFT writes them (the model's own tensors, not copies)."""
    modules = list(walk(model, modules))
    targets, saved = loaded_targets(model, adapter, modules)
    layout = adapter_layout(model, config, targets, saved, modules)
    loras, wrappers = lora_modules(model, modules), saved_wrappers(model, modules)
    copies = {path: wrappers[path].modules_to_save[adapter].state_dict() for path in saved}
    out: dict[str, torch.Tensor] = {}
    for key, (dest, shape) in layout.items():
        tensor: torch.Tensor
        if dest.role in keys.LORA_ROLES:
            tensor = loras[dest.module].tensors_of(adapter)[dest.role]
        elif dest.role == "saved":
            tensor = copies[dest.module][dest.param]
        else:  # "bias"
            tensor = cast(torch.Tensor, adapter_bias(base_module_at(model, dest.module)))
        # A shape the config does not give would write a folder that no load accepts.
        assert tuple(tensor.shape) == shape, (key, tuple(tensor.shape), shape)
        out[key] = tensor
    return out


def trained_biases(model: nn.Module, config: LoraConfig, adapter: str, modules=None) -> list[nn.Parameter]:
    """The bias parameters a loaded adapter trains (its biases that are not buffers)."""
    if config.bias == "none":  # no walk: every add_adapter asks
        return []
    modules = list(walk(model, modules))
    targets, saved = loaded_targets(model, adapter, modules)
    owners = bias_owners(config, targets, saved, modules)
    return [bias for module in owners.values() if isinstance(bias := adapter_bias(module), nn.Parameter)]


def module_roles(tensor_keys, saved_modules: set[str]) -> dict[str, set[str]]:
    """Adapted module -> the LoRA roles its keys hold ("A", "B", a variant's), from keys alone."""
    roles: dict[str, set[str]] = {}
    for key in tensor_keys:
        dest = keys.parse_key(key, saved_modules)
        if dest is not None and dest.role in keys.LORA_ROLES:
            roles.setdefault(dest.module, set()).add(dest.role)
    return roles
