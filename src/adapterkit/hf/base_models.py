"""`load_base`: one entry point for every way of naming a base model."""

from __future__ import annotations

from pathlib import Path

import torch

from adapterkit.core.bnb_layout import keep_standard_4bit_layout
from adapterkit.hf.embedded import EMBEDDED_NAME, embedded_model_dir
from adapterkit.hf.errors import BaseModelNotFoundError, QuantizationUnavailableError
from adapterkit.hf.hub import load_from_hub


def load_base(name_or_path: str | Path, dtype: torch.dtype = torch.float32, quantization: str | None = None):
    """Return `(model, tokenizer)` for a causal LM, in eval mode.

    `quantization` loads the Linear layers quantized by bitsandbytes (pip install
    adapterkit[quant]), through transformers' BitsAndBytesConfig, for QLoRA: "nf4", "fp4"
    (4-bit; add "+dq" for double quantization, e.g. "nf4+dq") or "int8". They compute in
    `dtype`; the output head and the embeddings stay in `dtype`.

    `name_or_path` is one of:
      - "smollm2": the built-in SmolLM2-135M-Instruct (converted and cached on first use);
      - a local transformers folder (config.json + weights + tokenizer);
      - a Hugging Face Hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".
    """
    name = str(name_or_path)
    extra = _quantization_kwargs(quantization, dtype)
    if name == EMBEDDED_NAME:
        model, tokenizer = _load_folder(embedded_model_dir(), dtype, **extra)
        # Adapters record this as their base: the name to pass back to load_base, not a
        # cache path that differs from machine to machine.
        model.config._name_or_path = EMBEDDED_NAME
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _load_folder(Path(name).expanduser(), dtype, **extra)
    elif _looks_like_path(name):
        raise BaseModelNotFoundError(
            f"base model folder {name!r} does not exist; pass an existing transformers folder, "
            f"a Hugging Face Hub id, or {EMBEDDED_NAME!r}"
        )
    else:
        model, tokenizer = load_from_hub(name, dtype, **extra)
    if quantization is not None:
        # Scored and trained with the same arithmetic, and trainable after an evaluation.
        keep_standard_4bit_layout(model)
    if tokenizer.pad_token is None:
        # Batching needs a pad id; padded positions are masked, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name" or "name"; anything else with a separator is a path.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


QUANTIZATIONS = ("nf4", "nf4+dq", "fp4", "fp4+dq", "int8")


def _quantization_kwargs(quantization: str | None, dtype: torch.dtype) -> dict:
    """from_pretrained keyword arguments for `quantization` (checked before anything loads)."""
    if quantization is None:
        return {}
    if quantization not in QUANTIZATIONS:
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} is not one of {list(QUANTIZATIONS)}; pass one of them, "
            "or None for a float model.")
    try:
        import bitsandbytes  # noqa: F401  (transformers needs it; say so in our words)
    except ImportError as err:
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} needs bitsandbytes, which is not installed: "
            "pip install 'adapterkit[quant]'.") from err
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quant_type, _, dq = quantization.partition("+")
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                    bnb_4bit_use_double_quant=bool(dq), bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": config}


def _load_folder(folder: Path, dtype: torch.dtype, **extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise BaseModelNotFoundError(
            f"{folder} holds no config.json, so it is not a transformers model folder; "
            f"save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    return model, tokenizer
