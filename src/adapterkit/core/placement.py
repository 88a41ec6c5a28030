"""Where a base module computes and where its weights are, when accelerate placed the model.

A base loaded with a `device_map` (transformers' `from_pretrained(device_map=...)`, accelerate's
`dispatch_model`, `cpu_offload`, `disk_offload`) carries accelerate hooks: `module._hf_hook`, an
AlignDevicesHook (alone or inside a SequentialHook), moves the module's inputs to its
`execution_device` before each forward. For an *offloaded* module (`hook.offload`) it also loads
the weights from `hook.weights_map` (a CPU state dict, or files on disk behind an
OffloadedWeightsLoader) just for the forward, and puts them back on the meta device after it.
Between forwards such a weight has a shape and a dtype but no values and no real device, and
adapterkit's forward hook runs after accelerate's, so it only ever sees the meta tensor.

This module is the one place that knows it (duck-typed: core never imports accelerate):
- `execution_device(module)`: where the module computes, so where its LoRA factors live. The hook
  says it; a meta weight never does. Without a hook, the weight's own device.
- `tensor_values(module, name)`: a weight's or bias's values, read through the weights map when
  the module is offloaded.
- writes (a merge, a PiSSA / OLoRA residual, a saved embedding layer): the values go into an
  `OverlaidWeights` put in place of the hook's weights map, an in-memory layer over it. The hook
  loads from it before each forward, and transformers' `save_pretrained` reads offloaded weights
  from it too, so a merged and unloaded model saves its merged weights. The map underneath, and
  the files behind it, are never written: with `device_map="auto"` they are often the user's own
  checkpoint (the offload index points into model.safetensors).
- merges are undone exactly: `begin_merge` keeps the weight as it was before the first merge and
  `end_merge` (when the last merged adapter is unmerged) puts that very tensor back; with nothing
  left over the original map, the hook gets its own map back. Merging through the overlay keeps
  the merged weights of the adapted modules in host memory (where the weights map is), which is
  what merging asks for: W + s·B·A has to be stored somewhere, and writing it to disk would
  mean writing into the user's files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from adapterkit.errors import OffloadedWeightError

__all__ = ["OverlaidWeights", "begin_merge", "end_merge", "execution_device", "is_offloaded", "offload_hook",
           "replace_weight", "tensor_values", "writable_weight"]

_META = "meta"


def _align_hooks(module: nn.Module) -> list[Any]:
    """The module's AlignDevicesHook-like hooks (those with an execution_device), outermost first."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    hooks = list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook chains several
    return [h for h in hooks if hasattr(h, "execution_device")]


def offload_hook(module: nn.Module) -> Any | None:
    """The hook that loads this module's weights from a weights map before each forward, if any."""
    for hook in _align_hooks(module):
        if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
            return hook
    return None


def is_offloaded(module: nn.Module, name: str = "weight") -> bool:
    """Does the module's `name` tensor sit on the meta device, with its values in a weights map?"""
    tensor = getattr(module, name, None)
    return isinstance(tensor, torch.Tensor) and tensor.device.type == _META and offload_hook(module) is not None


def _no_values(module: nn.Module, name: str) -> OffloadedWeightError:
    return OffloadedWeightError(
        f"{type(module).__name__}.{name} is on the meta device and no accelerate hook on that module holds its "
        "values (a weights map), so adapterkit cannot tell where it runs or read it. Load the base with "
        "from_pretrained(device_map=..., offload_folder=...) or accelerate's dispatch_model / cpu_offload / "
        "disk_offload without preload_module_classes covering this module, or load it without offload.")


def execution_device(module: nn.Module) -> torch.device:
    """Where the module computes: its accelerate hook's execution device, else its weight's device."""
    for hook in _align_hooks(module):
        device = hook.execution_device
        if device is not None:
            # accelerate may give a GPU as a bare index; torch.device(0) is cuda:0.
            return torch.device(device) if not isinstance(device, torch.device) else device
    weight: Any = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        weight = next(module.parameters(recurse=False), None)
    if weight is None:
        return torch.device("cpu")
    if weight.device.type == _META:
        raise _no_values(module, "weight")
    return weight.device


def tensor_values(module: nn.Module, name: str = "weight", device: torch.device | None = None) -> torch.Tensor:
    """The values of the module's `name` tensor (its weight, its bias), in its dtype: the tensor
    itself, or, offloaded, read through the hook's weights map (a read from disk for disk offload;
    moved to `device` if given). Read-only: write with `writable_weight` / `replace_weight`."""
    tensor: Any = getattr(module, name)
    if tensor.device.type != _META:
        return tensor if device is None else tensor.to(device)
    hook = offload_hook(module)
    if hook is None:
        raise _no_values(module, name)
    try:  # not `name in map`: for a map on disk, that reads the tensor too
        value = hook.weights_map[name]
    except KeyError:
        raise _no_values(module, name) from None
    return value.to(device=device if device is not None else value.device, dtype=tensor.dtype)


class OverlaidWeights(Mapping):
    """A module's weights map with some entries replaced in memory (see the module docstring).
    Reads fall through to the map under it for every other key."""

    def __init__(self, under: Mapping) -> None:
        self.under = under
        self.replaced: dict[str, torch.Tensor] = {}
        # name -> the replacement in place before the first merge (None: there was none)
        self.before_merge: dict[str, torch.Tensor | None] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.replaced[key] if key in self.replaced else self.under[key]

    def __contains__(self, key: object) -> bool:
        return key in self.replaced or key in self.under

    def __iter__(self) -> Iterator[str]:
        return iter(self.under)

    def __len__(self) -> int:
        return len(self.under)


def _overlay(hook: Any) -> OverlaidWeights:
    current = hook.weights_map
    if not isinstance(current, OverlaidWeights):
        current = hook.weights_map = OverlaidWeights(current)
    return current


def _drop_overlay_if_empty(hook: Any) -> None:
    overlay = hook.weights_map
    if isinstance(overlay, OverlaidWeights) and not overlay.replaced and not overlay.before_merge:
        hook.weights_map = overlay.under  # the hook's own map, exactly as accelerate made it


def writable_weight(module: nn.Module) -> torch.Tensor:
    """A tensor whose in-place changes change the weight the module computes with: the weight
    itself, or, offloaded, its in-memory replacement in the hook's map (made on first use)."""
    if not is_offloaded(module):
        weight: Any = module.weight
        if weight.device.type == _META:
            raise _no_values(module, "weight")
        return weight
    overlay = _overlay(offload_hook(module))
    if "weight" not in overlay.replaced:
        overlay.replaced["weight"] = tensor_values(module).clone()
    return overlay.replaced["weight"]


@torch.no_grad()
def replace_weight(module: nn.Module, values: torch.Tensor) -> None:
    """Set the module's weight to `values` for good (a PiSSA / OLoRA residual, a saved base layer)."""
    target = writable_weight(module)
    target.copy_(values.to(target.device, target.dtype))


def begin_merge(module: nn.Module) -> None:
    """Before the first adapter is merged here: keep the weight as it is, for `end_merge`.
    (A resident weight is merged into in place and unmerged by arithmetic, as before.)"""
    if not is_offloaded(module):
        return
    overlay = _overlay(offload_hook(module))
    if "weight" in overlay.before_merge:
        return
    overlay.before_merge["weight"] = overlay.replaced.get("weight")
    overlay.replaced["weight"] = tensor_values(module).clone()  # the merge writes into this copy


def end_merge(module: nn.Module) -> None:
    """After the last merged adapter was unmerged: the weight exactly as before `begin_merge`."""
    hook = offload_hook(module)
    overlay = getattr(hook, "weights_map", None)
    if not isinstance(overlay, OverlaidWeights) or "weight" not in overlay.before_merge:
        return
    kept = overlay.before_merge.pop("weight")
    if kept is None:
        overlay.replaced.pop("weight", None)
    else:
        overlay.replaced["weight"] = kept
    _drop_overlay_if_empty(hook)
