"""Adapters on a base accelerate placed or offloaded (`device_map`, `cpu_offload`, `disk_offload`):
the model-level rules. (Per module, core/placement.py says where a module runs and reads and writes
its offloaded weights through the accelerate hook: factors, DoRA, merges, PiSSA / OLoRA, fingerprints.)

- `check_offloaded_targets`: two things an adapter can carry are base tensors *trained in place*, and
  those cannot work on an offloaded module: accelerate loads its tensors afresh from the weights map
  before every forward, as new tensors, so an optimizer step on them would be lost (and saving would
  read meta tensors). Refused before anything changes, by add_adapter and by check_load (so `verify`
  agrees): a bias trained with bias="all" / "lora_only", and modules_to_save (a full trainable copy per
  adapter) of a module with offloaded tensors.
- `weight_sharers` / `forget_tie`: which modules share a weight, so that merges and residuals refuse to
  write into a tied one unless untied; accelerate's hooks hide ties from identity (see there).
- `resident_state_dict`: the state dict with offloaded entries read back, for a merged export.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from adapterkit.core import placement
from adapterkit.core.config import LoraConfig
from adapterkit.core.injection import ModulesToSave, walk
from adapterkit.errors import OffloadedWeightError
from adapterkit.model.state import bias_owners

_FIX = ("Load the base without offloading these modules (a device_map or max_memory that keeps them in memory), "
        "or leave them out of the adapter")


def _offloaded_tensors(module: nn.Module) -> bool:
    return any(placement.is_offloaded(m, name) for m in module.modules()
               for name, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)))


def check_offloaded_targets(model: nn.Module, config: LoraConfig, targets: Iterable, saved_modules: list[str],
                            modules=None) -> None:
    """Refuse, before anything changes, what cannot be trained on offloaded modules (see the docstring)."""
    if config.bias != "none":
        owners = bias_owners(config, list(targets), saved_modules, list(walk(model, modules)))  # model/state.py
        offloaded = [n for n, m in owners.items() if placement.is_offloaded(m, "bias")]
        if offloaded:
            raise OffloadedWeightError(
                f"bias={config.bias!r} trains the biases of {offloaded[:3]}, which accelerate has offloaded (their "
                "values live in its weights map and are reloaded before every forward, so a trained bias would be "
                f"lost). {_FIX} (bias='none'). Nothing was changed.")
    offloaded = [p for p in saved_modules if _offloaded_tensors(model.get_submodule(p))]
    if offloaded:
        raise OffloadedWeightError(
            f"modules_to_save {offloaded[:3]} would be copied and trained in full per adapter, but accelerate has "
            "offloaded their weights (on the meta device, reloaded before every forward), so a copy would hold no "
            f"values and its training would be lost. {_FIX} (drop them from modules_to_save). Nothing was changed.")


def resident_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every offloaded entry read through its hook (into host memory), for an
    export that writes the whole model. Entries that share one parameter (tied weights) share one tensor
    here too, so an export still tells them apart by storage."""
    state = model.state_dict()
    meta = [key for key, tensor in state.items() if tensor.device.type == "meta"]
    if not meta:
        return state
    owners = dict(model.named_modules())
    read: dict[int, torch.Tensor] = {}  # id(parameter) -> its values, read once per tied group
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    for key in meta:
        path, _, attr = key.rpartition(".")
        owner = owners.get(path)
        if owner is None or not placement.is_offloaded(owner, attr):
            raise OffloadedWeightError(
                f"{key} is on the meta device and no accelerate hook holds its values, so it cannot be exported. "
                "Load the base with from_pretrained(device_map=...) or accelerate's cpu_offload / disk_offload, or "
                "without offload.")
        param = tensors.get(key)
        identity = id(param) if param is not None else id(key)
        if identity not in read:
            read[identity] = placement.tensor_values(owner, attr).detach()
        state[key] = read[identity]
    return state


def _declared_ties(model: nn.Module) -> dict[str, str]:
    """Tied weights the model declares, as module paths (transformers' all_tied_weights_keys:
    {"lm_head.weight": "model.embed_tokens.weight"} -> {"lm_head": "model.embed_tokens"})."""
    ties = getattr(model, "all_tied_weights_keys", None)
    if not isinstance(ties, dict):
        return {}
    return {tied.rpartition(".")[0]: source.rpartition(".")[0] for tied, source in ties.items()
            if isinstance(tied, str) and isinstance(source, str) and tied.endswith(".weight")
            and source.endswith(".weight")}


def weight_sharers(model: nn.Module) -> dict[str, list[str]]:
    """Module path -> the other modules whose weight is the same tensor, so that writing into one (a merge,
    a residual) would change the others. By identity; and, for weights accelerate offloaded, by the ties
    the model declares: its hooks give each module its own meta tensor after a forward, so identity no
    longer shows the tie, though both modules still read one tensor of the checkpoint."""
    owners: dict[int, list[str]] = {}
    weights: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and not isinstance(module, ModulesToSave):
            owners.setdefault(id(weight), []).append(name)
            weights[name] = weight
    sharers = {name: [other for other in group if other != name] for group in owners.values() for name in group}
    for tied, source in _declared_ties(model).items():
        a, b = weights.get(tied), weights.get(source)
        if a is not None and b is not None and a is not b and a.device.type == b.device.type == "meta":
            sharers[tied].append(source)
            sharers[source].append(tied)
    return sharers


def forget_tie(model: nn.Module, path: str) -> None:
    """After `path`'s weight was given its own copy (merge_adapter(untie_weights=True)): drop the model's
    declared ties of it too, so that `weight_sharers` sees it untied (transformers drops a broken tie the same way)."""
    ties = getattr(model, "all_tied_weights_keys", None)
    if isinstance(ties, dict):
        for tied, source in list(ties.items()):
            if f"{path}.weight" in (tied, source):
                del ties[tied]
