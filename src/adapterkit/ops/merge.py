"""Export base + adapter as one plain transformers model folder."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from adapterkit.core.injection import lora_modules
from adapterkit.core.merge import merged_state_dict
from adapterkit.errors import NaNInMergeError, UnknownAdapterError
from adapterkit.model.adapter_model import AdapterModel
from adapterkit.model.offload import resident_state_dict
from adapterkit.model.quantized import refuse_quantized_merge
from adapterkit.model.state import saved_wrappers


def _base_keys(state: dict[str, torch.Tensor], base, names: list[str]) -> dict[str, torch.Tensor]:
    """Key a modules_to_save head as the plain model does: `<m>.original_module.*` and
    `<m>.modules_to_save.<adapter>.*` become `<m>.*`, from the first of `names` with a copy
    (else the original), as merge_and_unload keeps it."""
    for path, wrapper in saved_wrappers(base).items():
        keep = next((n for n in names if n in wrapper.modules_to_save), None)
        inner = f"{path}.modules_to_save.{keep}." if keep else f"{path}.original_module."
        dropped = (f"{path}.original_module.", f"{path}.modules_to_save.")
        chosen = {f"{path}.{k[len(inner):]}": v for k, v in state.items() if k.startswith(inner)}
        state = {k: v for k, v in state.items() if not k.startswith(dropped)}
        state.update(chosen)
    return state


def _adapters_to_merge(model: AdapterModel, adapter_names: list[str] | str | None) -> list[str]:
    """The names to fold in, all loaded: a misspelt name would otherwise export the plain base."""
    if isinstance(adapter_names, str):
        adapter_names = [adapter_names]
    names = list(adapter_names) if adapter_names else list(model.active_adapters)
    loaded = sorted(model.peft_config)
    if not names:
        raise UnknownAdapterError(
            f"No adapter to merge: none is active and adapter_names is empty; loaded adapters: {loaded}. "
            "Name the adapters to merge with adapter_names=[...].")
    unknown = [n for n in names if n not in model.peft_config]
    if unknown:
        raise UnknownAdapterError(
            f"Cannot export {unknown} merged: no adapter of that name is loaded; loaded adapters: {loaded}. "
            "Check the spelling, or load it first with load_adapter(path, adapter_name=...).")
    return names


def export_merged(model: AdapterModel, out: str | Path, tokenizer=None, adapter_names: list[str] | None = None,
                  safe_merge: bool = True) -> Path:
    """Save base + adapters (default: the active ones) merged, as a folder that
    transformers loads on its own. The merge is computed on a copy of the state
    dict: the live model and its adapters are left exactly as they were."""
    names = _adapters_to_merge(model, adapter_names)  # before anything is written
    refuse_quantized_merge(model._loras(), names)  # a packed weight plus ΔW is no weight at all
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    base = model.get_base_model()
    original = resident_state_dict(base)  # offloaded weights (accelerate) read back into memory
    state = _base_keys(merged_state_dict(original, lora_modules(base), names), base, names)
    # A merged weight that was tied (lm_head to the embeddings) now differs from its twin:
    # the export must store both, so it is saved untied. (state_dict() detaches each key on
    # its own, so tied entries are told apart by shared storage, not by identity.)
    untie = any(state[k] is not v and any(o.data_ptr() == v.data_ptr() for k2, o in original.items() if k2 != k)
                for k, v in original.items() if k in state)
    if safe_merge:
        broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise NaNInMergeError(f"Merging {names} puts NaN or inf into {broken[:3]}; nothing was written. "
                                  "Check the adapter weights (diverged training?).")
    config: Any = getattr(base, "config", None)
    was_tied = getattr(config, "tie_word_embeddings", None)
    save_pretrained: Any = base.save_pretrained  # a transformers model's
    try:
        if untie and was_tied:
            config.tie_word_embeddings = False
        save_pretrained(staging, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if untie and was_tied:
            config.tie_word_embeddings = was_tied
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
