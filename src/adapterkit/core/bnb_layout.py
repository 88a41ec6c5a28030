"""Keeping bitsandbytes 4-bit layers in their trainable layout.

On CPUs with AVX512-BF16, bitsandbytes (0.49 and later) repacks a Linear4bit weight the
first time the layer runs in eval mode on an input that needs no gradient (an evaluation,
a `generate`): a new byte layout, absmax rounded to bfloat16 and transposed, and from then
on a bfloat16 kernel (`gemv_4bit`) that has no autograd formula. The layer stays that way.
For adapters on such a base that breaks three things:

  - training after an evaluation runs that kernel, so no gradient flows back through the
    base layers to the adapters before them: QLoRA on SmolLM2 that had its base scored first
    ended at loss 6.2 and 0% exact-match, against 0.2 and 94% without the evaluation;
  - bitsandbytes' inverse works in place and, without double quantization, leaves absmax
    transposed, so dequantizing a repacked weight gave wrong weights (and left the layer
    computing garbage);
  - the eval outputs come from other arithmetic (bfloat16) than the training outputs.

So adapterkit keeps every 4-bit layer of a base it loads or wraps in the standard layout
(`keep_standard_4bit_layout`): it turns the CPU kernel off for that layer and restores a layer
already repacked. Such a layer's absmax stays rounded to bfloat16, as bitsandbytes left it.
Nothing here imports bitsandbytes unless a repacked layer exists.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from adapterkit.core.kinds import quantization_of

# bitsandbytes' per-layer switch for its CPU inference kernel (read in Linear4bit.forward).
_CPU_KERNEL_SWITCH = "support_avx512bf16_for_cpu"


def is_cpu_repacked(state: Any) -> bool:
    return bool(getattr(state, "packing_format_for_cpu", False))


def standard_layout(data: torch.Tensor, state: Any, requantize_statistics: bool = False) -> tuple[torch.Tensor, Any]:
    """`(data, quant_state)` of a 4-bit weight in bitsandbytes' standard layout, as new objects:
    the arguments are left as they are (bitsandbytes' own inverse changes its state in place).

    absmax comes back as the float32 values the repacked layer computes with, unless
    `requantize_statistics` and the layer had double quantization: then it is quantized
    again, as bitsandbytes does, to keep the layer's memory (at a small rounding cost)."""
    if not is_cpu_repacked(state):
        return data, state
    import bitsandbytes.functional as bnb_f

    repacked_absmax = state.absmax  # (in / blocksize, out), bfloat16
    restored = copy.copy(state)
    if not requantize_statistics:
        restored.original_nested = False
    data, restored = bnb_f._convert_weight_packed_for_cpu_inverse(data, restored)
    if not restored.nested:
        # bitsandbytes restores the order of absmax only when it re-quantizes it (double
        # quantization); otherwise it stays transposed, and dequantizing mixes up the blocks.
        restored.absmax = repacked_absmax.T.reshape(-1).float()
    return data, restored


def keep_standard_4bit_layout(model: nn.Module) -> int:
    """Turn bitsandbytes' CPU repacking off for every 4-bit layer of `model`, and restore the
    layers it already repacked; returns how many it restored."""
    restored = 0
    for module in model.modules():
        if quantization_of(module) in ("", "int8"):
            continue
        setattr(module, _CPU_KERNEL_SWITCH, False)
        weight: Any = module.weight
        if is_cpu_repacked(getattr(weight, "quant_state", None)):
            weight.data, weight.quant_state = standard_layout(weight.data, weight.quant_state, requantize_statistics=True)
            if getattr(module, "quant_state", None) is not None:  # bitsandbytes keeps a second reference
                module.quant_state = weight.quant_state
            restored += 1
    return restored
