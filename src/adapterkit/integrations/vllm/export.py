"""Write a PEFT folder that vLLM 0.33 loads, when a lossless conversion exists; refuse otherwise.

Lossless means vLLM then computes exactly what PEFT computes with the original:

- `adapter_model.bin` becomes `adapter_model.safetensors` (same tensors);
- `bias` other than "none", when the file holds no bias tensor (PEFT then trained
  none: a base without biases, as Llama's attention), becomes "none";
- `lora_bias: true` with every `lora_B.bias` exactly zero: the biases are
  dropped and the flag cleared (adding zero changes nothing);
- `modules_to_save` entries other than classifier/score that have no tensors in
  the file (a name that matched no module) are dropped.

Everything else that vLLM refuses changes results if dropped: DoRA's magnitudes,
trained biases, full copies of modules, inits that rewrite the base (PiSSA,
OLoRA, ...), aLoRA, and so on. Those are refused, each with its reason and fix.
A rank above `--max-lora-rank` is not the folder's problem but the server's
setting: the report says which `--max-lora-rank` serves it. A rank below it, or
between two allowed values (24, say), needs no padding: vLLM only compares the
largest rank with `--max-lora-rank` (PEFTHelper.validate_legal) and places each
adapter in slots `--max-lora-rank` wide itself.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapterkit.core.config import CONFIG_NAME
from adapterkit.errors import VllmIncompatibleError
from adapterkit.integrations.vllm.rules import (
    CLASSIFICATION_HEADS,
    MAX_LORA_RANKS,
    check_config,
    check_keys,
    check_max_lora_rank,
    classify_key,
    read_raw_config,
    smallest_max_rank_for,
)
from adapterkit.io.folder import SAFETENSORS_NAME, find_weights, read_legacy_bin, read_safetensors


@dataclass
class VllmExport:
    folder: Path
    rank: int
    changes: list[str] = field(default_factory=list)  # each lossless conversion made, in words

    @property
    def max_lora_rank(self) -> int:
        """The smallest `--max-lora-rank` that serves this adapter."""
        fitting = smallest_max_rank_for(self.rank)
        assert fitting is not None  # export refuses ranks no setting serves
        return fitting


def lossless_conversions(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """The config and tensors with every lossless fix applied, and what changed (inputs untouched)."""
    config, tensors, changes = dict(config), dict(tensors), []
    if config.get("bias", "none") != "none" and not any(_is_base_bias(k) for k in tensors):
        changes.append(f"bias {config['bias']!r} -> 'none': the file holds no bias tensor, so none was trained")
        config["bias"] = "none"
    lora_biases = [k for k in tensors if k.endswith(".lora_B.bias")]
    if config.get("lora_bias") and all(not bool(tensors[k].any()) for k in lora_biases):
        for key in lora_biases:
            del tensors[key]
        config["lora_bias"] = False
        changes.append(f"lora_bias true -> false: its {len(lora_biases)} bias tensor(s) are all zero")
    modules_to_save = config.get("modules_to_save") or []
    absent = [m for m in modules_to_save if m not in CLASSIFICATION_HEADS and not _has_full_module(tensors, m)]
    if absent:
        kept = [m for m in modules_to_save if m not in absent]
        config["modules_to_save"] = kept or None
        changes.append(f"modules_to_save drops {absent}: the file holds no tensor for them")
    return config, tensors, changes


def _is_base_bias(key: str) -> bool:
    parts = key.split(".")
    return parts[-1] == "bias" and parts[-2] not in ("lora_A", "lora_B", *CLASSIFICATION_HEADS)


def _has_full_module(tensors: dict[str, torch.Tensor], module: str) -> bool:
    return any(module in key.split(".")[:-1] and classify_key(key) not in ("A", "B") for key in tensors)


def export_for_vllm(source: str | os.PathLike, target: str | os.PathLike, max_lora_rank: int | None = None) -> VllmExport:
    """Write `source` as a folder vLLM loads at `target` (which must not exist), or raise
    VllmIncompatibleError naming every reason no lossless conversion exists.

    `max_lora_rank`: the server's `--max-lora-rank`; refuse adapters above it. None: any
    rank vLLM can serve (the export reports the setting it needs)."""
    source, target = Path(source), Path(target)
    if max_lora_rank is not None:
        check_max_lora_rank(max_lora_rank)
    if target.exists():
        raise FileExistsError(f"{target} already exists; export to a new folder, or remove it first")
    config = read_raw_config(source)
    weights = find_weights(source)
    if weights.suffix == ".safetensors":
        tensors, metadata = read_safetensors(weights)
    else:
        tensors, metadata = read_legacy_bin(weights), {}
    config, tensors, changes = lossless_conversions(config, tensors)
    if weights.suffix != ".safetensors":
        changes.append(f"{weights.name} -> {SAFETENSORS_NAME}")
    findings, rank = check_config(config, MAX_LORA_RANKS[-1] if max_lora_rank is None else max_lora_rank)
    findings += check_keys(list(tensors))
    if findings:
        raise VllmIncompatibleError(
            f"{source} cannot be served by vLLM and no lossless conversion exists: " + "; ".join(map(str, findings))
        )
    _write_folder(target, config, tensors, metadata)
    return VllmExport(target, rank, changes)


def _write_folder(target: Path, config: dict, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Beside the target first, then renamed: the folder appears complete or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        compact = {key: tensor.contiguous() for key, tensor in tensors.items()}
        save_file(compact, str(staging / SAFETENSORS_NAME), metadata={**metadata, "format": "pt"})
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
