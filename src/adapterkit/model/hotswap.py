"""Hot-swapping: replace a loaded adapter's weights in place from a folder.

No module is added or removed and every tensor keeps its identity: the new factors
are copied into the adapter's existing parameters (views into its rank pack), a
smaller rank zero-padded. A `torch.compile`d model therefore runs the new adapter
without recompiling, as with PEFT's `hotswap_adapter` (peft PR #2120, #2177).

The scale s = alpha / r is the one value that is not a tensor: adapterkit keeps it as a
Python float, which torch.compile bakes into the graph. If the new folder's scale
differs, `prepare_model_for_compiled_hotswap(model)` (call it before compiling) turns
every scale into a 0-d tensor that the swap then fills in place; a compiled model that
was not prepared is refused rather than silently recompiled.

Everything is checked before the first copy: on any error the model is unchanged.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterkit.core.config import LoraConfig, is_base_init
from adapterkit.core.layer import lora_scale
from adapterkit.errors import HotswapError
from adapterkit.io.folder import read_adapter_folder
from adapterkit.model.loading import check_load
from adapterkit.model.state import base_module_at


@dataclass
class HotswapPlan:
    factors: dict[str, dict[str, torch.Tensor]]  # module -> {"A", "B"} (rank <= the loaded one)
    scales: dict[str, float]  # module -> new scale
    zeroed: list[str]  # modules the adapter covers and the folder does not: their factors become 0
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    config: LoraConfig | None = None  # what save_pretrained writes afterwards


def unwrap_compiled(model):
    """(the AdapterModel, whether it came wrapped by torch.compile)."""
    from adapterkit.model.adapter_model import AdapterModel

    inner = getattr(model, "_orig_mod", model)  # torch.compile returns an OptimizedModule around it
    if not isinstance(inner, AdapterModel):
        raise HotswapError(
            f"hotswap_adapter needs an adapterkit AdapterModel (or torch.compile of one), got {type(model).__name__}. "
            "Wrap the base with get_peft_model / AdapterModel.from_pretrained first.")
    return inner, inner is not model


def prepare_model_for_compiled_hotswap(model, target_rank: int | None = None) -> None:
    """Get a model ready for hotswaps under torch.compile; call it after loading the first adapter(s),
    before compiling (PEFT's function of the same name).

    - Every adapter's scale becomes a 0-d tensor, so a swap that changes alpha / r fills it in place.
    - `target_rank`: every adapter is zero-padded to this rank (outputs unchanged), so adapters up to
      that rank can be swapped in later; padding re-creates the adapter's parameters, which is why it
      must happen before compiling.
    """
    inner, compiled = unwrap_compiled(model)
    if compiled:
        raise HotswapError(
            "prepare_model_for_compiled_hotswap was called on a compiled model: converting the scales now would "
            "recompile it. Call it on the model before torch.compile.")
    loras = inner._loras()
    if target_rank is not None:
        _check_target_rank(inner, loras, target_rank)
        for name in list(inner.peft_config):
            _pad_adapter(inner, loras, name, target_rank)
    for lora in loras.values():
        for info in lora.info.values():
            if not isinstance(info.scale, torch.Tensor):
                info.scale = torch.tensor(float(info.scale), device=lora.packs[info.rank].device)


def _check_target_rank(model, loras, target_rank) -> None:
    if isinstance(target_rank, bool) or not isinstance(target_rank, int) or target_rank <= 0:
        raise HotswapError(f"target_rank must be a positive integer, got {target_rank!r}.")
    larger = [f"{name} at {path} (rank {lora.info[name].rank})" for path, lora in loras.items()
              for name in lora.info if lora.info[name].rank > target_rank]
    if larger:
        raise HotswapError(f"target_rank={target_rank} is below the rank of {larger[:3]}; pass the largest rank.")
    merged = sorted({name for lora in loras.values() for name in lora.merged})
    if merged:
        raise HotswapError(f"{merged} are merged into the base weights; call unmerge_adapter() before padding.")


@torch.no_grad()
def _pad_adapter(model, loras, name: str, target_rank: int) -> None:
    """Re-add `name` at `target_rank` wherever its rank is smaller, its factors zero-padded and
    its scale kept; then describe the result in its config."""
    padded = False
    for lora in loras.values():
        if not lora.has(name) or lora.info[name].rank == target_rank:
            continue
        info = lora.info[name]
        A, B = lora.lora_A[name].detach().clone(), lora.lora_B[name].detach().clone()
        scale, dropout = float(info.scale), info.dropout
        lora.remove(name)
        lora.add(name, target_rank, scale * target_rank, dropout, False, init=None, trainable=False)
        _set_scale(lora, name, scale)  # exactly the old value, not (s·r)/r
        lora.lora_A[name].zero_()
        lora.lora_B[name].zero_()
        lora.lora_A[name][: A.shape[0]].copy_(A)
        lora.lora_B[name][:, : B.shape[1]].copy_(B)
        padded = True
    if not padded:
        return
    model._ownership.pop(name, None)  # new parameter objects: the cached list is stale
    model._set_requires_grad({name: name in model.routing.active and model._trainable.get(name, False)})
    config = model.peft_config[name]
    described = _describe(config, {p: lora for p, lora in loras.items() if lora.has(name)}, name)
    described.base_model_name_or_path, described.revision = config.base_model_name_or_path, config.revision
    model.peft_config[name] = described


def hotswap_adapter(model, model_id: str | os.PathLike, adapter_name: str = "default") -> None:
    inner, compiled = unwrap_compiled(model)
    plan = plan_hotswap(inner, model_id, adapter_name, compiled)
    _apply(inner, adapter_name, plan)


def plan_hotswap(model, model_id, adapter_name: str, compiled: bool) -> HotswapPlan:
    model._check_known(adapter_name)
    old = model.peft_config[adapter_name]
    files = read_adapter_folder(model_id)
    new = files.config
    new.check_supported()
    loras = {path: lora for path, lora in model._loras().items() if lora.has(adapter_name)}
    merged = [path for path, lora in loras.items() if adapter_name in lora.merged]
    if merged:
        raise HotswapError(
            f"{adapter_name!r} is merged into the base weights (e.g. {merged[0]}); swapping now would corrupt them "
            "on unmerge. Call unmerge_adapter() first.")
    pissa_like = [c.init_lora_weights for c in (old, new) if is_base_init(c.init_lora_weights)]
    if pissa_like:
        raise HotswapError(
            f"init_lora_weights={pissa_like[0]!r} ties an adapter to a residual base weight, which a hotswap "
            "cannot change. Swap plain LoRA adapters (convert with path_initial_model_for_weight_conversion).")
    if old.use_dora or new.use_dora:
        raise HotswapError(
            f"hotswap swaps plain LoRA factors; {adapter_name!r} or {model_id} is a DoRA adapter (use_dora=True), "
            "whose magnitude vectors are not swapped. Use load_adapter(..., overwrite=True) instead.")
    for name in ("lora_dropout", "bias"):  # PEFT refuses these too: they are not in the tensors
        if getattr(old, name) != getattr(new, name):
            raise HotswapError(
                f"{model_id} has {name}={getattr(new, name)!r} but {adapter_name!r} has {getattr(old, name)!r}; "
                f"a hotswap keeps the loaded adapter's {name}. Use load_adapter(..., overwrite=True) instead.")
    # The checks load_adapter makes (keys, shapes, dtypes, finite values, the base), before anything changes.
    check = check_load(model.model, files, model.base_fingerprint, modules=model._module_walk(),
                       targets_for=model._targets_for)
    for message in check.warnings:
        warnings.warn(message, stacklevel=4)
    check.raise_first()
    plan = check.plan
    assert plan is not None  # check_load plans whenever it found no problem
    outside = sorted(set(plan.factors) - set(loras))
    if outside:
        raise HotswapError(
            f"{model_id} adapts {outside[:3]}, which {adapter_name!r} does not: a hotswap cannot add modules "
            "(a compiled graph would not see them). Use load_adapter(..., overwrite=True) instead.")
    larger = [f"{path} (rank {factor['A'].shape[0]} > {loras[path].info[adapter_name].rank})"
              for path, factor in plan.factors.items()
              if factor["A"].shape[0] > loras[path].info[adapter_name].rank]
    if larger:
        raise HotswapError(
            f"{model_id} has a larger rank than {adapter_name!r} at {larger[:3]}; a hotswap pads smaller ranks "
            "with zeros but cannot grow a tensor in place. Call prepare_model_for_compiled_hotswap(model, "
            "target_rank=...) before compiling, or load the largest-rank adapter first.")
    saved_now = sorted(w for w, wrapper in model._saved().items() if adapter_name in wrapper.modules_to_save)
    if sorted(plan.saved) != saved_now:
        raise HotswapError(
            f"{model_id} trains modules {sorted(plan.saved)} in full but {adapter_name!r} trains {saved_now} "
            "(modules_to_save); a hotswap needs the same ones. Use load_adapter(..., overwrite=True) instead.")
    scales = {path: lora_scale(new.alpha_for(path), new.rank_for(path), new.use_rslora) for path in plan.factors}
    changed = [p for p, s in scales.items() if float(loras[p].info[adapter_name].scale) != s]
    floats = [p for p in changed if not isinstance(loras[p].info[adapter_name].scale, torch.Tensor)]
    if compiled and floats:
        raise HotswapError(
            f"{model_id} changes the scale (alpha / r) at {floats[:3]}, which this compiled model holds as a Python "
            "constant: swapping would recompile it. Call adapterkit.prepare_model_for_compiled_hotswap(model) "
            "before torch.compile, or give both adapters the same alpha / r.")
    zeroed = sorted(set(loras) - set(plan.factors))
    return HotswapPlan(plan.factors, scales, zeroed, plan.saved, plan.biases,
                       _config_after(old, new, loras, adapter_name, scales))


def _config_after(old: LoraConfig, new: LoraConfig, loras, adapter_name, scales) -> LoraConfig:
    """The config save_pretrained writes after a swap: the loaded tensors' shapes and modules, each
    module's new scale, and the new folder's descriptive fields."""
    config = _describe(old, loras, adapter_name, scales)
    config.base_model_name_or_path = new.base_model_name_or_path or old.base_model_name_or_path
    config.revision = new.revision
    return config


def _describe(base: LoraConfig, loras, adapter_name, scales: dict[str, float] | None = None) -> LoraConfig:
    """`base` with r / rank_pattern and lora_alpha / alpha_pattern rewritten to give each module the
    rank it holds and the scale it uses (`scales`, else its current one), use_rslora off."""
    config = LoraConfig.from_dict(base.to_dict())
    scales = scales or {}
    ranks = {path: lora.info[adapter_name].rank for path, lora in loras.items()}
    alphas = {path: (scales[path] if path in scales else float(lora.info[adapter_name].scale)) * ranks[path]
              for path, lora in loras.items()}  # s = alpha / r
    config.use_rslora = False
    config.r = Counter(ranks.values()).most_common(1)[0][0]
    config.rank_pattern = {re.escape(path): rank for path, rank in ranks.items() if rank != config.r}
    config.lora_alpha = Counter(alphas.values()).most_common(1)[0][0]
    config.alpha_pattern = {re.escape(path): alpha for path, alpha in alphas.items() if alpha != config.lora_alpha}
    return config


@torch.no_grad()
def _apply(model, adapter_name: str, plan: HotswapPlan) -> None:
    loras = model._loras()
    for path, factor in plan.factors.items():
        lora = loras[path]
        A, B = lora.lora_A[adapter_name], lora.lora_B[adapter_name]
        rank = factor["A"].shape[0]
        if rank < A.shape[0]:
            A.zero_()
            B.zero_()
        A[:rank].copy_(factor["A"])
        B[:, :rank].copy_(factor["B"])
        _set_scale(lora, adapter_name, plan.scales[path])
    for path in plan.zeroed:
        loras[path].lora_A[adapter_name].zero_()
        loras[path].lora_B[adapter_name].zero_()
    for path, params in plan.saved.items():
        model.model.get_submodule(path).modules_to_save[adapter_name].load_state_dict(params)
    for path, bias in plan.biases.items():
        module: Any = base_module_at(model.model, path)  # a modules_to_save wrapper holds the base's module
        module.bias.copy_(bias)
    assert plan.config is not None
    model.peft_config[adapter_name] = plan.config


def _set_scale(lora, adapter_name: str, scale: float) -> None:
    info = lora.info[adapter_name]
    if isinstance(info.scale, torch.Tensor):
        info.scale.fill_(scale)  # the same tensor: a compiled graph reads the new value
    else:
        info.scale = scale
    pack = lora.packs[info.rank]
    pack.scale[pack.used[adapter_name]] = scale  # mixed batches read the pack's copy
