"""Merging as a pure function over state dicts: the live model is never touched.

Used to export a merged model while the adapters stay usable: merging in place
and unmerging again leaves float rounding residue in the base weights, this does not.
"""

from __future__ import annotations

import torch

from adapterkit.core.layer import LoraAdapters


def merged_state_dict(state: dict[str, torch.Tensor], loras: dict[str, LoraAdapters],
                      adapter_names: list[str]) -> dict[str, torch.Tensor]:
    """A copy of `state` (keyed like the base model) with the adapters folded into
    each adapted weight; adapter tensors (`.lora.` keys) are left out."""
    merged = {k: v for k, v in state.items() if ".lora." not in f".{k}"}
    for path, lora in loras.items():
        names = [n for n in adapter_names if lora.has(n) and n not in lora.merged]
        if not names:
            continue
        key = f"{path}.weight" if path else "weight"
        merged[key] = lora.merged_weight(merged[key], names).detach()  # a new tensor, W untouched
    return merged
