"""Adapters on quantized (bitsandbytes) bases: refusing in-place merges, and the explicit
dequantize -> merge -> plain float model path.

A 4-bit or 8-bit weight cannot take s·B·A in place: re-quantizing the sum would
change every output of the layer by the quantization error of the whole weight, and
the adapter could not be unmerged exactly. So merge_adapter() and merge_and_unload()
refuse (QuantizedMergeError, nothing changed), unless the caller asks for
merge_and_unload(dequantize=True): every quantized layer becomes a plain nn.Linear
holding its dequantized weight, with the adapters merged into it, and the model
that comes back is a float model (its quantization config dropped).
"""

from __future__ import annotations

import torch
from torch import nn

from adapterkit.core.injection import detach, walk
from adapterkit.core.kinds import dequantized_linear, kind_of, quantization_of
from adapterkit.core.layer import LoraAdapters
from adapterkit.errors import NaNInMergeError, QuantizedMergeError


def quantized_paths(loras: dict[str, LoraAdapters], names: list[str]) -> list[str]:
    """Paths of quantized modules where one of `names` would be merged."""
    return [path for path, lora in loras.items()
            if lora.kind.quantized and any(lora.has(n) and n not in lora.merged for n in names)]


def refuse_quantized_merge(loras: dict[str, LoraAdapters], names: list[str]) -> None:
    paths = quantized_paths(loras, names)
    if paths:
        kinds = sorted({quantization_of(loras[p].base) for p in paths})
        raise QuantizedMergeError(
            f"Cannot merge {names} into {len(paths)} quantized module(s) ({', '.join(kinds)}), e.g. {paths[:3]}: "
            "a packed 4-bit / 8-bit weight cannot hold W + s·B·A without re-quantizing it, which changes "
            "the layer's outputs and cannot be undone. Nothing was merged. Keep the adapter unmerged "
            "(it runs as is), or call merge_and_unload(dequantize=True) to get a float model with the "
            "adapters merged, or load the adapter onto the full-precision base and merge there.")


@torch.no_grad()
def dequantized_replacements(model: nn.Module, loras: dict[str, LoraAdapters], names: list[str],
                             safe_merge: bool, modules=None) -> dict[str, nn.Linear]:
    """Every quantized layer of `model` as a float nn.Linear, with `names` merged into the
    adapted ones. Pure: the model is not changed."""
    out: dict[str, nn.Linear] = {}
    for path, module in walk(model, modules):
        if not path or kind_of(module) is None or not kind_of(module).quantized:  # type: ignore[union-attr]
            continue
        linear = dequantized_linear(module)
        lora = loras.get(path)
        if lora is not None:
            todo = [n for n in names if lora.has(n) and n not in lora.merged]
            linear.weight.copy_(lora.merged_weight(linear.weight, todo))  # plain LoRA adds; DoRA rescales
        if safe_merge and not torch.isfinite(linear.weight).all():
            raise NaNInMergeError(
                f"Merging {names} would put NaN or inf into {path}; nothing was merged. "
                "The adapter weights are broken (diverged training?): check them, or retrain.")
        out[path] = linear
    return out


def swap_in_dequantized(model: nn.Module, replacements: dict[str, nn.Linear]) -> None:
    """Put each float layer where its quantized one was (its adapters detached first), and
    drop the model's record of being quantized so save_pretrained writes a float model."""
    for path, linear in replacements.items():
        module = model.get_submodule(path)
        detach(module)
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, linear)
    if not replacements:
        return
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            config.quantization_config = None
    for flag in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if isinstance(getattr(model, flag, None), bool):
            try:
                setattr(model, flag, False)
            except AttributeError:
                pass  # a read-only property derived from hf_quantizer, cleared next
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            try:
                setattr(model, attribute, None)
            except AttributeError:
                pass


def resident_bytes(model: nn.Module) -> int:
    """What `model` holds resident: its parameters and buffers, plus the 4-bit quantization
    statistics (absmax, and for double quantization their own statistics) that bitsandbytes
    keeps beside each packed weight rather than as a parameter."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            for tensor in (state.absmax, getattr(getattr(state, "state2", None), "absmax", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total
