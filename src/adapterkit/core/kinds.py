"""Module kinds: what LoRA needs to know about each kind of base module it can adapt.

One small strategy object per kind replaces a string branched on all over the code:
its name (the on-disk key family in io.keys), how to read (in, out) features, the
dtype its factors are kept in, how its weight is laid out, whether A is indexed
rather than multiplied, and whether its weight can take a merge.

    LINEAR            nn.Linear: W (out, in)
    CONV1D            transformers' Conv1D: W stored (in, out)
    EMBEDDING         nn.Embedding: W (V, dim); A is indexed by token id
    QUANTIZED_LINEAR  bitsandbytes Linear4bit (nf4 / fp4, double quant) and Linear8bitLt:
                      the weight is packed, so features come from the module; the
                      factors stay float32 (as PEFT's), and the weight cannot take a
                      merge without dequantizing (see `dequantized_linear`).

Quantized layers are recognised by their class and its bases (whether transformers'
BitsAndBytesConfig made them or user code swapped them in), by name, so that core
never imports bitsandbytes; only dequantizing does, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterkit.core import placement

__all__ = ["CONV1D", "EMBEDDING", "LINEAR", "QUANTIZED_LINEAR", "KINDS", "ModuleKind", "dequantized_linear",
           "kind_of", "quantization_of"]

_BNB_4BIT = "Linear4bit"
_BNB_8BIT = "Linear8bitLt"


@dataclass(frozen=True)
class ModuleKind:
    name: str  # also the key family in io.keys.FACTOR_SUFFIX
    weight_is_out_in: bool  # W laid out (out, in), as nn.Linear; else (in, out) / (V, dim)
    indexed: bool = False  # A is looked up by token id (Embedding), not multiplied
    quantized: bool = False  # the stored weight is packed: no in-place merge, features from the module

    def features(self, module: nn.Module) -> tuple[int, int]:
        """(in_features, out_features) as LoRA sees them: A is (r, in), B is (out, r)."""
        layer: Any = module  # nn.Module's __getattr__ types every attribute as Tensor | Module
        if self.quantized:
            return int(layer.in_features), int(layer.out_features)
        shape = layer.weight.shape
        return (shape[1], shape[0]) if self.weight_is_out_in else (shape[0], shape[1])

    def factor_dtype(self, module: nn.Module) -> torch.dtype:
        """Quantized weights are int8 / packed uint8: the factors stay float32, as PEFT's do."""
        weight: Any = module.weight
        return torch.float32 if self.quantized else weight.dtype

    def to_weight_layout(self, delta: torch.Tensor) -> torch.Tensor:
        """An (out, in) delta laid out like the base weight (and back: the layout is a transpose)."""
        return delta if self.weight_is_out_in else delta.T

    def dense_weight(self, module: nn.Module) -> torch.Tensor:
        """The module's weight as the (out, in) matrix it computes with (dequantized if packed)."""
        if self.quantized:
            return dequantized_weight(module)
        # Offloaded by accelerate, the weight is on meta between forwards: read it through the hook.
        return self.to_weight_layout(placement.tensor_values(module, "weight", placement.execution_device(module)))


LINEAR = ModuleKind("linear", weight_is_out_in=True)
CONV1D = ModuleKind("conv1d", weight_is_out_in=False)
EMBEDDING = ModuleKind("embedding", weight_is_out_in=False, indexed=True)
QUANTIZED_LINEAR = ModuleKind("quantized_linear", weight_is_out_in=True, quantized=True)


KINDS = {kind.name: kind for kind in (LINEAR, CONV1D, EMBEDDING, QUANTIZED_LINEAR)}


def _bnb_class(module: nn.Module) -> str | None:
    """'Linear4bit' / 'Linear8bitLt' if the module is (a subclass of) that bitsandbytes layer."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("bitsandbytes") and cls.__name__ in (_BNB_4BIT, _BNB_8BIT):
            return cls.__name__
    return None


def kind_of(module: nn.Module) -> ModuleKind | None:
    """The kind of a module LoRA can adapt, else None. Quantized layers first: both
    bitsandbytes layers subclass nn.Linear, but their weight is not an (out, in) matrix."""
    if _bnb_class(module) is not None:
        return QUANTIZED_LINEAR
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    # transformers' Conv1D (GPT-2), recognised without importing transformers.
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight"):
        return CONV1D
    return None


def quantization_of(module: nn.Module) -> str:
    """'nf4', 'fp4' (with '+dq' for double quantization), 'int8', or '' for a float module."""
    cls = _bnb_class(module)
    if cls == _BNB_8BIT:
        return "int8"
    if cls == _BNB_4BIT:
        state: Any = getattr(module.weight, "quant_state", None)
        quant_type = getattr(state, "quant_type", None) or getattr(module.weight, "quant_type", "nf4")
        nested = getattr(state, "nested", False) or getattr(module.weight, "compress_statistics", False)
        return f"{quant_type}+dq" if nested else str(quant_type)
    return ""


@torch.no_grad()
def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) float32 weight a bitsandbytes layer computes with (as PEFT's dequantize)."""
    import bitsandbytes.functional as bnb_f  # only ever needed when such a layer exists

    weight: Any = module.weight
    if _bnb_class(module) == _BNB_4BIT:
        if getattr(weight, "quant_state", None) is None:
            raise ValueError(f"{type(module).__name__} has not quantized its weight yet (move it to a device first).")
        from adapterkit.core.bnb_layout import standard_layout  # (it imports this module)

        # Repacked for bitsandbytes' CPU kernel: undone on copies, the layer is left as it is.
        data, state = standard_layout(weight.data, weight.quant_state)
        return bnb_f.dequantize_4bit(data, state).float()
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    if scb is None:  # has_fp16_weights=True: the weight is still a float matrix
        return weight.data.float()
    return bnb_f.int8_vectorwise_dequant(weight.data, scb.to(weight.device)).float()


@torch.no_grad()
def dequantized_linear(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Linear:
    """A plain nn.Linear equal to the quantized layer's dequantized weight (and its bias)."""
    weight = dequantized_weight(module)
    dtype = dtype or getattr(module, "compute_dtype", None) or torch.float32
    bias = getattr(module, "bias", None)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype)
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    linear.requires_grad_(False)
    return linear
