"""LoRA variants: the one extension point for what an adapter is beyond plain LoRA.

A variant decides, for each adapter that uses it:
  - what it stores beside A and B (`tensors`: a role, the LoraAdapters attribute holding it,
    PEFT's on-disk key suffix; `tensor_shapes` gives their shapes at a module);
  - how those start (`reset`, after A and B have their initial values);
  - its forward delta, as a `correction` added on top of the plain LoRA output s·B·A·x (so a
    mixed batch runs every row through one gathered LoRA path and corrects its variant rows);
  - its merged weight (`merge`) and the exact inverse (`unmerge`), with whatever state the
    inverse needs kept by the layer between the two;
  - which module kinds it supports, and the LoraConfig flag that selects it (`flag`).

core/layer.py calls these and never names a variant; save, load, verify and inspect read the
roles through model/state.py, and io/keys.py builds its key table from `tensors`. Plain LoRA is
the base class itself. Adding a variant: subclass LoraVariant, add an instance to VARIANTS
(docs/ARCHITECTURE.md walks through it).

Weights here are the (out, in) "dense" matrices (core.kinds lays them out per kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from adapterkit.core import dora
from adapterkit.core.kinds import ModuleKind

if TYPE_CHECKING:  # layer.py imports this module; the layer is only ever passed in
    from adapterkit.core.layer import LoraAdapters

__all__ = ["DORA", "PLAIN_LORA", "VARIANTS", "DoraVariant", "LoraVariant", "VariantTensor", "variant_of",
           "variant_tensors"]


@dataclass(frozen=True)
class VariantTensor:
    """One tensor a variant stores per adapter, beside A and B."""

    role: str  # its name in load plans and io.keys ("M"); never "A" or "B"
    attr: str  # the LoraAdapters attribute (an AdapterParameters) holding it: `<path>.lora.<attr>.<adapter>`
    disk_suffix: str  # PEFT's on-disk key: base_model.model.<path>.<disk_suffix>


class LoraVariant:
    """Plain LoRA: y = base(x) + s·B·A·x, merged by adding s·B·A. Variants override what differs."""

    name = "lora"
    flag: str | None = None  # the boolean LoraConfig field that selects this variant
    tensors: tuple[VariantTensor, ...] = ()
    corrects_output = False  # True: `correction` adds to the plain LoRA output
    additive_merge = True  # True: merge adds s·B·A and unmerge subtracts it (order never matters)

    def supports(self, kind: ModuleKind) -> bool:
        return True

    def tensor_shapes(self, in_features: int, out_features: int, rank: int) -> dict[str, tuple[int, ...]]:
        """Shapes of `tensors` by role, at a module with these features."""
        return {}

    def reset(self, layer: LoraAdapters, name: str) -> None:
        """Give the adapter's own tensors their initial values (A and B have theirs already)."""

    def correction(self, layer: LoraAdapters, name: str, x: torch.Tensor, lora_out: torch.Tensor,
                   base_out: torch.Tensor | None) -> torch.Tensor | None:
        """What the adapter adds on top of `lora_out` = s·B·A·x (..., out), or None. `base_out` is
        W·x without the bias when the caller has it for this very x (else None: compute it)."""
        return None

    def merge(self, layer: LoraAdapters, name: str, dense: torch.Tensor,
              delta: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(the merged (out, in) weight, what `unmerge` needs back). `delta` = s·B·A, (out, in)."""
        return dense + delta.to(dense.dtype), None

    def unmerge(self, layer: LoraAdapters, name: str, merged: torch.Tensor, delta: torch.Tensor,
                state: Any) -> torch.Tensor:
        """The exact inverse of `merge`."""
        return merged - delta.to(merged.dtype)

    def is_noop(self, layer: LoraAdapters, name: str) -> bool:
        """True while the adapter cannot change outputs (B or A all zero, for plain LoRA)."""
        return bool((layer.lora_B[name] == 0).all() or (layer.lora_A[name] == 0).all())

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DoraVariant(LoraVariant):
    """DoRA (arXiv 2402.09353), as PEFT 0.21.2 computes it on Linear, Conv1D, Embedding and
    bitsandbytes Linear: a magnitude m (out,) per adapter; y = (m / ‖W + s·B·A‖) ⊙ (W x + s·B·A·x).
    The math is in core/dora.py."""

    name = "dora"
    flag = "use_dora"
    tensors = (VariantTensor("M", dora.MAGNITUDE_ATTR, "lora_magnitude_vector"),)
    corrects_output = True
    additive_merge = False

    def tensor_shapes(self, in_features: int, out_features: int, rank: int) -> dict[str, tuple[int, ...]]:
        return {"M": (out_features,)}

    @torch.no_grad()
    def reset(self, layer: LoraAdapters, name: str) -> None:
        """m = ‖W + s·B·A‖ per output row, so a DoRA adapter starts as its plain LoRA does."""
        layer.extra(dora.MAGNITUDE_ATTR)[name].copy_(self._norm(layer, name))

    def _norm(self, layer: LoraAdapters, name: str, scale: float | None = None) -> torch.Tensor:
        scale = layer.info[name].scale if scale is None else scale
        return dora.weight_norm(layer.kind.dense_weight(layer.base), layer.lora_A[name], layer.lora_B[name], scale)

    def correction(self, layer: LoraAdapters, name: str, x: torch.Tensor, lora_out: torch.Tensor,
                   base_out: torch.Tensor | None) -> torch.Tensor:
        # An embedding's W·x is a lookup, not x @ W: its callers always pass the base output.
        assert base_out is not None or not layer.kind.indexed
        dense = layer.kind.dense_weight(layer.base)
        magnitude = layer.extra(dora.MAGNITUDE_ATTR)[name]
        norm = dora.weight_norm(dense, layer.lora_A[name], layer.lora_B[name], layer.info[name].scale)
        return dora.correction(x, dense, lora_out, magnitude, norm, base_out).to(lora_out.dtype)

    def merge(self, layer: LoraAdapters, name: str, dense: torch.Tensor,
              delta: torch.Tensor) -> tuple[torch.Tensor, Any]:
        magnitude = layer.extra(dora.MAGNITUDE_ATTR)[name].detach().to(dense.device)
        return dora.merge(dense, delta.to(dense.device), magnitude)  # the norm: W' no longer holds it

    def unmerge(self, layer: LoraAdapters, name: str, merged: torch.Tensor, delta: torch.Tensor,
                state: Any) -> torch.Tensor:
        magnitude = layer.extra(dora.MAGNITUDE_ATTR)[name].detach().to(merged.device)
        return dora.unmerge(merged, delta.to(merged.device), magnitude, state)

    def is_noop(self, layer: LoraAdapters, name: str) -> bool:
        """Plain LoRA's no-op, with m still ‖W‖ (the gain is then exactly 1)."""
        if not super().is_noop(layer, name):
            return False
        magnitude = layer.extra(dora.MAGNITUDE_ATTR)[name].detach()
        return bool(torch.equal(magnitude, self._norm(layer, name, 0.0).to(magnitude.dtype)))


PLAIN_LORA = LoraVariant()
DORA = DoraVariant()

# Every variant besides plain LoRA, each selected by its own LoraConfig flag.
VARIANTS: tuple[LoraVariant, ...] = (DORA,)


def variant_of(config: Any) -> LoraVariant:
    """The variant a LoraConfig selects by its flag (plain LoRA when none is set). With DoRA the
    only variant, a config cannot name two; a second variant must also refuse combinations it
    does not define, in LoraConfig.check_supported."""
    chosen = [variant for variant in VARIANTS if variant.flag and getattr(config, variant.flag, False)]
    return chosen[0] if chosen else PLAIN_LORA


def variant_tensors() -> tuple[VariantTensor, ...]:
    """Every tensor any variant stores, once each (LoraAdapters makes a holder for each)."""
    seen: dict[str, VariantTensor] = {}
    for variant in VARIANTS:
        for tensor in variant.tensors:
            seen.setdefault(tensor.attr, tensor)
    return tuple(seen.values())
