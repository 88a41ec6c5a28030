"""An adapter's values, whatever the model: floating dtypes, and finite tensors and scales.

Needs no model: `adapterkit inspect` runs check_values alone, and model.loading.check_tensors
runs it as part of every load and every verify, so all three agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adapterkit.core.config import LoraConfig
from adapterkit.errors import AdapterDtypeError, AdapterError, NonFiniteAdapterError


def _all_finite(tensor: torch.Tensor) -> bool:
    if tensor.element_size() == 1:  # float8: torch has no isfinite for it
        tensor = tensor.float()
    return bool(torch.isfinite(tensor).all())


_CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 per concatenated check


def nonfinite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Keys of the (floating) tensors that hold NaN or inf.

    A load checks every tensor, often hundreds of small ones: one isfinite per tensor costs more
    in calls than in arithmetic (4x the time, measured). So tensors are summed in concatenated
    chunks: a NaN or inf anywhere makes the sum NaN or inf (inf - inf is NaN). Only a chunk whose
    sum is not finite, which finite values can also cause by overflowing, is looked at tensor by
    tensor, exactly."""
    bad: list[str] = []
    for chunk in _chunks(list(tensors), lambda key: tensors[key].numel()):
        flat = torch.cat([(t.float() if t.element_size() == 1 else t).reshape(-1)
                          for t in (tensors[key] for key in chunk)])
        if not bool(torch.isfinite(flat.sum())):
            bad += [key for key in chunk if not _all_finite(tensors[key])]
    return bad


def _chunks(keys: list[str], size: Callable[[str], int]):
    chunk: list[str] = []
    total = 0
    for key in keys:
        if chunk and total + size(key) > _CHUNK_ELEMENTS:
            yield chunk
            chunk, total = [], 0
        chunk.append(key)
        total += size(key)
    if chunk:
        yield chunk


@dataclass
class ValueCheck:
    """What is wrong with an adapter's values: dtypes and finiteness (overflows: filled in by a load,
    which knows the model's dtype)."""

    wrong_dtype: list[tuple[str, torch.dtype]] = field(default_factory=list)  # key, dtype
    nonfinite: list[str] = field(default_factory=list)  # keys of tensors holding NaN or inf
    nonfinite_scales: list[str] = field(default_factory=list)  # e.g. "lora_alpha=nan"
    # Finite in the file, inf once cast to the model's dtype (1e300 in float64, 1e5 for float16).
    overflows: list[tuple[str, torch.dtype]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"{key} has dtype {str(dtype).removeprefix('torch.')}; adapter tensors must be floating point"
                 for key, dtype in self.wrong_dtype]
                + [f"{key} holds NaN or inf" for key in self.nonfinite]
                + [f"{scale} is not a finite number" for scale in self.nonfinite_scales]
                + [f"{key} overflows {str(dtype).removeprefix('torch.')}, the model's dtype: its values would become inf"
                   for key, dtype in self.overflows])

    def errors(self, source: str, config_source: str) -> list[AdapterError]:
        out: list[AdapterError] = []
        if self.nonfinite_scales:
            out.append(NonFiniteAdapterError(
                f"{config_source} sets {', '.join(self.nonfinite_scales[:3])}: a scale that is not a finite "
                "number poisons every output. Fix the value, or pass allow_nonfinite=True "
                "(CLI: --allow-nonfinite) to load it anyway."))
        if self.wrong_dtype:
            shown = ", ".join(f"{k} ({str(d).removeprefix('torch.')})" for k, d in self.wrong_dtype[:3])
            out.append(AdapterDtypeError(
                f"{source} holds {len(self.wrong_dtype)} tensor(s) that are not floating point, e.g. {shown}; "
                "LoRA tensors are float32, float16, bfloat16 or float64, and casting these would change "
                "them. Re-save the adapter from its floating-point weights."))
        if self.nonfinite:
            out.append(NonFiniteAdapterError(
                f"{source} holds NaN or inf in {len(self.nonfinite)} tensor(s), e.g. {self.nonfinite[:3]}; "
                "loading it would poison every output. The adapter is broken (diverged training?): retrain "
                "it, or pass allow_nonfinite=True (CLI: --allow-nonfinite) to load it anyway."))
        if self.overflows:
            key, dtype = self.overflows[0]
            out.append(NonFiniteAdapterError(
                f"{source} holds values too large for {str(dtype).removeprefix('torch.')}, this model's dtype, in "
                f"{len(self.overflows)} tensor(s), e.g. {key}: they would load as inf and poison every output. "
                "Load the base in a wider dtype, or pass allow_nonfinite=True (CLI: --allow-nonfinite)."))
        return out


def check_values(config: LoraConfig, tensors: dict[str, torch.Tensor], allow_nonfinite: bool = False) -> ValueCheck:
    """Dtype of every tensor, and unless `allow_nonfinite`, finiteness of every tensor and scale."""
    check = ValueCheck()
    # int, bool and complex all fail is_floating_point
    check.wrong_dtype = [(key, t.dtype) for key, t in tensors.items() if not t.is_floating_point()]
    if not allow_nonfinite:
        check.nonfinite = nonfinite_keys({k: t for k, t in tensors.items() if t.is_floating_point()})
        scales = {"lora_alpha": config.lora_alpha,
                  **{f"alpha_pattern[{k!r}]": v for k, v in config.alpha_pattern.items()}}
        check.nonfinite_scales = [f"{name}={value}" for name, value in scales.items()
                                  if not math.isfinite(value)]
    return check
