"""Would vLLM 0.33 load this PEFT folder? vLLM's own rules, applied before deployment.

vLLM reads an adapter in two places, and refuses it only when a request first
needs it. Each rule below cites the vLLM 0.33.0 function it mirrors:

- `vllm/lora/peft_helper.py`, `PEFTHelper.from_dict`, `__post_init__`,
  `_validate_features`, `_init_is_supported` and `validate_legal`: the config;
- `vllm/config/lora.py`, `MaxLoRARanks`: the only values `--max-lora-rank` takes;
- `vllm/lora/lora_model.py`, `LoRAModel.from_local_checkpoint` and
  `from_lora_tensors`, with `vllm/lora/utils.py`, `parse_fine_tuned_lora_name`
  and `is_base_embedding_weights`: the tensor names.

What this cannot see without the served model: whether each adapted module is
one vLLM's implementation of that architecture supports (`expected_lora_modules`
in `from_local_checkpoint`), and whether an embedding adapter's vocabulary
matches the model's. vLLM checks those at load.

Nothing here imports vLLM. The tests compare these verdicts with vLLM's own
`PEFTHelper.validate_legal` on generated configs whenever vLLM is importable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from adapterkit.core.config import CONFIG_NAME
from adapterkit.errors import (
    AdapterConfigError,
    AdapterConfigNotFoundError,
    AdapterFolderNotFoundError,
    CorruptAdapterFileError,
)
from adapterkit.io.folder import find_weights, read_legacy_bin

VLLM_VERSION = "0.33.0"
# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]; default 16.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
# peft_helper.py, PEFTHelper: the fields without a default.
REQUIRED_FIELDS = ("r", "lora_alpha", "target_modules")
# peft_helper.py, _validate_features: the only modules_to_save vLLM loads (classification heads).
CLASSIFICATION_HEADS = ("classifier", "score")
# peft_helper.py, _init_is_supported: string inits that leave the base untouched.
SUPPORTED_STRING_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# peft_helper.py, _validate_features: features vLLM does not implement, and how it names them.
UNSUPPORTED_FEATURES = {
    "alora_invocation_tokens": "Activated LoRA (aLoRA)",
    "layer_replication": "layer_replication",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
    "use_qalora": "QALoRA",
}
# utils.py, is_base_embedding_weights: tensors vLLM skips without reading.
SKIPPED_SUFFIXES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")


@dataclass(frozen=True)
class Finding:
    """One reason vLLM would refuse the folder."""

    rule: str  # a stable id: "use_dora", "max_lora_rank", "key", ...
    problem: str
    fix: str
    source: str  # the vLLM function that enforces it

    def __str__(self) -> str:
        return f"{self.problem} (vLLM {VLLM_VERSION} {self.source}); fix: {self.fix}"


@dataclass
class VllmVerdict:
    folder: Path
    max_lora_rank: int
    findings: list[Finding] = field(default_factory=list)
    rank: int = 0  # the largest rank in the adapter (r and rank_pattern)

    @property
    def ok(self) -> bool:
        return not self.findings

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}


def check_max_lora_rank(max_lora_rank: int) -> int:
    if max_lora_rank not in MAX_LORA_RANKS:
        raise AdapterConfigError(
            f"--max-lora-rank {max_lora_rank} is not a value vLLM {VLLM_VERSION} accepts; "
            f"use one of {', '.join(map(str, MAX_LORA_RANKS))}"
        )
    return max_lora_rank


def smallest_max_rank_for(rank: int) -> int | None:
    """The smallest `--max-lora-rank` that serves `rank`, or None when none does."""
    return next((allowed for allowed in MAX_LORA_RANKS if allowed >= rank), None)


def read_raw_config(folder: Path) -> dict:
    """adapter_config.json as vLLM reads it: plain JSON, no defaults filled in."""
    if not folder.is_dir():
        raise AdapterFolderNotFoundError(f"adapter folder {folder} does not exist; pass the folder holding {CONFIG_NAME}")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterConfigNotFoundError(f"{folder} holds no {CONFIG_NAME}; pass the folder that save_pretrained wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterConfigError(f"{path} is not valid JSON ({exc}); save the adapter again") from exc
    if not isinstance(config, dict):
        raise AdapterConfigError(f"{path} holds a JSON {type(config).__name__}, not an object; save the adapter again")
    return config


def tensor_names(weights: Path) -> list[str]:
    """Tensor names of a weights file; a safetensors file is read by its header only."""
    if weights.suffix != ".safetensors":
        return list(read_legacy_bin(weights))
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise CorruptAdapterFileError(f"{weights} is not a readable safetensors file ({exc}); save the adapter again") from exc


def check_config(config: Mapping, max_lora_rank: int = DEFAULT_MAX_LORA_RANK) -> tuple[list[Finding], int]:
    """The config rules (peft_helper.py). Returns the findings and the adapter's largest rank."""
    check_max_lora_rank(max_lora_rank)
    findings: list[Finding] = []
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:  # PEFTHelper.from_dict raises before any other check
        return [Finding("missing_field", f"adapter_config.json lacks {', '.join(missing)}",
                        f"add {', '.join(missing)} to adapter_config.json (PEFT always writes them)",
                        "PEFTHelper.from_dict")], 0
    ranks = _ranks(config, findings)
    if findings:  # PEFTHelper.__post_init__ raises on a bad rank before validate_legal runs
        return findings, 0

    modules_to_save = config.get("modules_to_save") or []
    others = [m for m in modules_to_save if m not in CLASSIFICATION_HEADS]
    if others:
        findings.append(Finding(
            "modules_to_save", f"modules_to_save {others}: vLLM loads only {list(CLASSIFICATION_HEADS)}",
            "retrain without modules_to_save (target those modules with LoRA instead), or merge the adapter "
            "into the base (adapterkit merge) and serve the merged model",
            "PEFTHelper._validate_features"))
    if config.get("use_dora"):
        findings.append(Finding(
            "use_dora", "use_dora is true: vLLM has no DoRA",
            "merge the adapter into the base (adapterkit merge) and serve the merged model, or retrain as plain LoRA",
            "PEFTHelper._validate_features"))
    if config.get("lora_bias"):
        findings.append(Finding(
            "lora_bias", "lora_bias is true: vLLM has no LoRA bias",
            "adapterkit export --for vllm drops the biases when they are all zero; otherwise retrain with "
            "lora_bias=False", "PEFTHelper._validate_features"))
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in SUPPORTED_STRING_INITS:
        findings.append(Finding(
            "init_lora_weights", f"init_lora_weights={init!r}: inits such as PiSSA, OLoRA, CorDA and LoftQ change the base weights "
            f"when PEFT loads the adapter",
            "save it as a plain LoRA with save_pretrained(..., path_initial_model_for_weight_conversion=<the folder "
            "saved right after init>) (adapterkit and PEFT both have it), or set init_lora_weights to true if the "
            "served base already holds the modified weights",
            "PEFTHelper._init_is_supported"))
    for name, feature in UNSUPPORTED_FEATURES.items():
        if config.get(name):
            findings.append(Finding(name, f"{name} is set: vLLM does not support {feature}",
                                    f"retrain without {name}, or merge the adapter and serve the merged model",
                                    "PEFTHelper._validate_features"))
    rank = max(ranks)
    if rank > max_lora_rank:
        fitting = smallest_max_rank_for(rank)
        fix = (f"start vLLM with --max-lora-rank {fitting}" if fitting is not None else
               f"retrain with r <= {MAX_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts")
        findings.append(Finding("max_lora_rank", f"rank {rank} is above --max-lora-rank {max_lora_rank}", fix,
                                "PEFTHelper.validate_legal"))
    if config.get("bias", "none") != "none":
        findings.append(Finding(
            "bias", f"bias is {config.get('bias')!r}: vLLM serves no trained base biases",
            "adapterkit export --for vllm sets it to 'none' when the file holds no bias tensors; otherwise "
            "retrain with bias='none'", "PEFTHelper.validate_legal"))
    return findings, rank


def _ranks(config: Mapping, findings: list[Finding]) -> list[int]:
    # Exactly vLLM's tests, quirks included: a bool passes as an int there (True is rank 1).
    r = config["r"]
    if not isinstance(r, (int, float)) or r <= 0:
        findings.append(Finding("rank", f"r is {r!r}, not a positive integer", "set r to the rank the adapter was trained with",
                                "PEFTHelper.__post_init__"))
    pattern = config.get("rank_pattern") or {}
    for key, value in (pattern.items() if isinstance(pattern, dict) else ()):
        if not isinstance(value, int) or value <= 0:
            findings.append(Finding("rank", f"rank_pattern[{key!r}] is {value!r}, not a positive integer",
                                    "fix rank_pattern to the ranks the tensors have", "PEFTHelper.__post_init__"))
    if findings:
        return []
    return [int(r), *pattern.values()]


def classify_key(key: str) -> str | None:
    """What vLLM makes of one tensor name: "A", "B", "head" (a classification head's full
    weight or bias), "skip" (ignored base embedding), or None (refused). Mirrors
    `parse_fine_tuned_lora_name` and `is_base_embedding_weights` in vllm/lora/utils.py."""
    if key.endswith(SKIPPED_SUFFIXES):
        return "skip"
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        if parts[-2] in ("lora_A", "lora_B") and parts[-1] == "weight":
            return parts[-2][-1]
        if parts[-2] in CLASSIFICATION_HEADS:
            return "head"
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return parts[-1][-1]
    return None


def module_of(key: str) -> str:
    """The module a LoRA tensor belongs to (the name without `base_model.model.` and the factor)."""
    name = key.removeprefix("base_model.model.")
    parts = name.split(".")
    return ".".join(parts[:-2] if parts[-1] == "weight" else parts[:-1])


def check_keys(keys: list[str]) -> list[Finding]:
    """The tensor-name rules (lora_model.py, utils.py)."""
    findings: list[Finding] = []
    if not keys:
        return [Finding("empty", "the weights file holds no tensors", "save the adapter again",
                        "LoRAModel.from_local_checkpoint")]
    refused = [k for k in keys if classify_key(k) is None]
    if refused:
        shown = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        findings.append(Finding(
            "key", f"{len(refused)} tensor name(s) vLLM cannot parse: {shown}",
            "keep only lora_A/lora_B (and lora_embedding_A/B) tensors; adapterkit export --for vllm drops "
            "all-zero LoRA biases, and anything else needs retraining without the feature that wrote it",
            "parse_fine_tuned_lora_name"))
    factors: dict[str, set[str]] = {}
    for key in keys:
        kind = classify_key(key)
        if kind in ("A", "B"):
            factors.setdefault(module_of(key), set()).add(kind)
    unpaired = sorted(module for module, kinds in factors.items() if kinds != {"A", "B"})
    if unpaired:
        findings.append(Finding(
            "missing_key", f"{len(unpaired)} module(s) have only one of lora_A / lora_B: {', '.join(unpaired[:3])}",
            "save the adapter again: the file is incomplete", "LoRAModel.from_lora_tensors"))
    heads = {k.split(".")[-2] for k in keys if classify_key(k) == "head"}
    if len(heads) > 1:
        findings.append(Finding(
            "modules_to_save", f"full weights for {sorted(heads)}: vLLM loads one classification head per adapter",
            "keep one classification head in modules_to_save", "LoRAModel.from_lora_tensors"))
    return findings


def check_for_vllm(folder: str | os.PathLike, max_lora_rank: int = DEFAULT_MAX_LORA_RANK) -> VllmVerdict:
    """Every reason vLLM 0.33 would refuse `folder` (an empty list: it loads)."""
    folder = Path(folder)
    check_max_lora_rank(max_lora_rank)
    config = read_raw_config(folder)
    verdict = VllmVerdict(folder, max_lora_rank)
    verdict.findings, verdict.rank = check_config(config, max_lora_rank)
    verdict.findings += check_keys(tensor_names(find_weights(folder)))
    return verdict
