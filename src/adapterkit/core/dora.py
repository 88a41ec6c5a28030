"""DoRA (weight-decomposed LoRA, arXiv 2402.09353), as PEFT 0.21.2 computes it.

A DoRA adapter stores, beside A and B, a magnitude m (out,) per output feature. With
V = W + s·B·A (W as (out, in)) and n = ‖V‖ per output row (treated as a constant:
no gradient flows through it, §4.3 of the paper), the layer computes

    y = (m / n) ⊙ (V x) = W x + s·B A x + (g - 1) ⊙ (W x + s·B A x),   g = m / n

so its output is the plain LoRA delta s·B A x plus a *correction* (g - 1) ⊙ (W x + s·B A x).
That split lets a mixed batch run DoRA rows through the same gathered LoRA path as plain
rows and add the correction for the DoRA rows alone.

Merging is not additive: W' = g ⊙ (W + s·B·A). The exact inverse, W = W' / g - s·B·A, needs
the n of the merge (W' no longer holds it), so the merge returns it and unmerge takes it back.

Everything here works on the (out, in) "dense" weight; core.kinds lays it out per kind
(Conv1D stores (in, out), an Embedding (V, dim): its "out" is dim, its "in" the vocabulary, as PEFT's;
a quantized layer is dequantized, and merging into it is refused). core.variants.DoraVariant
plugs these into the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MAGNITUDE_ATTR", "correction", "merge", "unmerge", "weight_norm"]

# The LoraAdapters attribute (an AdapterParameters) holding each DoRA adapter's magnitude;
# PEFT's on-disk key suffix is the same word (core.variants.DoraVariant declares both).
MAGNITUDE_ATTR = "lora_magnitude_vector"


def weight_norm(dense: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """n = ‖W + s·B·A‖ per output row, detached: (out,)."""
    lora_weight = (B.detach() @ A.detach()).to(dense.dtype)  # (out, r) @ (r, in) -> (out, in)
    return torch.linalg.norm(dense + scale * lora_weight, dim=1).detach()


def correction(x: torch.Tensor, dense: torch.Tensor, lora_out: torch.Tensor, magnitude: torch.Tensor,
               norm: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
    """(g - 1) ⊙ (W x + lora_out): what DoRA adds on top of the plain LoRA output `lora_out`
    (= s·B A x, already computed). x: (..., in), lora_out: (..., out). `base_out` is W x when
    the caller has it: the base layer's own output (bias excluded), as PEFT uses it; on a
    quantized layer it differs from x @ dequantized(W) by the layer's activation rounding."""
    gain_minus_one = magnitude / norm - 1  # (out,)
    wx = F.linear(x.to(dense.dtype), dense) if base_out is None else base_out.to(lora_out.dtype)
    return gain_minus_one * (wx + lora_out)  # (..., out)


@torch.no_grad()
def merge(dense: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', n): the merged (out, in) weight, and the norm unmerge needs back."""
    combined = dense + delta.to(dense.dtype)
    norm = torch.linalg.norm(combined, dim=1)
    gain = (magnitude.to(dense.dtype) / norm).view(-1, 1)
    return gain * combined, norm


@torch.no_grad()
def unmerge(merged: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The inverse of `merge`: W = W' / g - s·B·A."""
    gain = (magnitude.to(merged.dtype) / norm).view(-1, 1)
    return merged / gain - delta.to(merged.dtype)
