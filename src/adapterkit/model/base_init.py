"""PiSSA and OLoRA on an AdapterModel: inits that move part of the base weight into the adapter.

- At add_adapter: the factors come from the base weight (core.init) and the base keeps
  the residual, so outputs are unchanged at init.
- At load_adapter of a folder whose config still says "pissa"/"olora": the residual is
  recomputed from the base, as PEFT does, and the file's factors are used as they are.
  (Save the initial adapter with init_lora_weights=True, or convert, to avoid that.)
- At save: `path_initial_model_for_weight_conversion` turns the adapter into a plain
  LoRA of the *original* base, PEFT's convention: ΔW = s·(B·A - B₀·A₀) = s·[B | -B₀]·[A ; A₀],
  written with rank 2r and alpha doubled (scale unchanged).

Only Linear and Conv1D weights are decomposed; an Embedding keeps the default init, as in
PEFT. Deliberate differences from PEFT 0.21.2: OLoRA on a Conv1D decomposes the (out, in)
weight (PEFT decomposes the stored (in, out) one, which changes the outputs at init);
conversion keeps the embedding factors, biases and modules_to_save tensors (PEFT drops them).
"""

from __future__ import annotations

import math
import os

import torch

from adapterkit.core import placement
from adapterkit.core.config import LoraConfig, is_base_init
from adapterkit.core.init import base_init_factors, residual
from adapterkit.core.kinds import CONV1D, LINEAR
from adapterkit.errors import AdapterStateError, WeightConversionError
from adapterkit.io import keys
from adapterkit.io.folder import read_adapter_folder
from adapterkit.model.offload import weight_sharers

DECOMPOSED_KINDS = (LINEAR, CONV1D)  # a quantized weight is refused (see check_base_init)


def check_base_init(base: torch.nn.Module, config: LoraConfig, targets) -> None:
    """Refuse, before anything changes, a base-reading init on a weight shared with another module:
    writing its residual would change that module too."""
    if not is_base_init(config.init_lora_weights):
        return
    sharers = weight_sharers(base)  # ties by identity, and those accelerate's offload hides
    quantized = [t.name for t in targets if t.kind.quantized]
    if quantized:
        raise AdapterStateError(
            f"init_lora_weights={config.init_lora_weights!r} writes a residual into the base weight, but "
            f"{quantized[:3]} are quantized (bitsandbytes) and cannot be written in place. Use "
            "init_lora_weights=True on a quantized base, or initialise on the full-precision base.")
    for target in targets:
        if target.kind in DECOMPOSED_KINDS:
            sharing = sharers.get(target.name, [])
            if sharing:
                raise AdapterStateError(
                    f"init_lora_weights={config.init_lora_weights!r} would write a residual into {target.name}.weight, "
                    f"which is tied to {sharing[0]}.weight and would change it too. Exclude {target.name} "
                    "(exclude_modules) or untie the weights first.")


@torch.no_grad()
def apply_base_init(model, adapter_name: str, config: LoraConfig, write_factors: bool) -> None:
    """Move each adapted weight's principal part into the adapter (write_factors=True, a new
    adapter) or only subtract it from the base (False: a load whose factors came from the file)."""
    init = config.init_lora_weights
    assert isinstance(init, str) and is_base_init(init)
    for lora in model._loras().values():
        if not lora.has(adapter_name) or lora.kind not in DECOMPOSED_KINDS:
            continue
        info = lora.info[adapter_name]
        stored = placement.tensor_values(lora.base)  # offloaded by accelerate: read through its hook
        weight = stored.float() if lora.kind.weight_is_out_in else stored.float().T  # (out, in)
        scale = float(info.scale)
        A, B = base_init_factors(init, weight, info.rank, scale)
        if write_factors:
            lora.lora_A[adapter_name].copy_(A)
            lora.lora_B[adapter_name].copy_(B)
        rest = residual(weight, A, B, scale)
        placement.replace_weight(lora.base, rest if lora.kind.weight_is_out_in else rest.T)


def convert_to_plain_lora(config: LoraConfig, tensors: dict[str, torch.Tensor],
                          initial_folder: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """PEFT's save_pretrained(path_initial_model_for_weight_conversion=...): the adapter as a LoRA
    of the original base, from its tensors now and those saved right after init."""
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise WeightConversionError(
            "Converting to a plain LoRA is not supported with use_rslora together with rank_pattern or "
            "alpha_pattern (PEFT refuses it too): the doubled rank would change the scale per module.")
    initial = read_adapter_folder(initial_folder).tensors
    converted = dict(tensors)
    problems = []
    for key, tensor in tensors.items():
        factor = _factor_of(key)
        if factor is None:  # biases, modules_to_save: not factors, kept as they are
            continue
        start = initial.get(key)
        if start is None or start.shape != tensor.shape:
            problems.append(f"{key}: {'missing' if start is None else f'shape {list(start.shape)}'} in the initial "
                            f"folder, {list(tensor.shape)} now")
            continue
        start = start.to(tensor.device, tensor.dtype)
        if factor == "A":
            converted[key] = torch.cat([tensor, start], dim=0)  # (2r, in): [A ; A₀]
        else:
            converted[key] = torch.cat([tensor, -start], dim=1)  # (out, 2r): [B | -B₀]
    if problems:
        raise WeightConversionError(
            f"{initial_folder} is not this adapter's initial state: {'; '.join(problems[:3])}. Pass the folder "
            "saved right after the PiSSA / OLoRA init, before training.")
    result = LoraConfig.from_dict(config.to_dict())
    result.init_lora_weights = True
    result.r *= 2
    result.lora_alpha *= 2 if not config.use_rslora else math.sqrt(2)  # scale = alpha / r (or / √r) unchanged
    result.rank_pattern = {k: 2 * v for k, v in config.rank_pattern.items()}
    result.alpha_pattern = {k: 2 * v for k, v in config.alpha_pattern.items()}
    return result, converted


def _factor_of(key: str) -> str | None:
    """"A" or "B" for a factor's key; None for anything else, a variant's own tensors included (DoRA's
    magnitude: W_res + s·B·A and the converted W + s·(B·A - B₀·A₀) are one matrix, so it carries over)."""
    for suffix, factor in keys.SUFFIX_FACTOR.items():
        if key.endswith("." + suffix):
            return factor if factor in ("A", "B") else None
    return None
