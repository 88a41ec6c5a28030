"""`load_base`: one entry point for every way of naming a base model."""

from __future__ import annotations

from pathlib import Path

import torch

from adapterkit.hf.embedded import EMBEDDED_NAME, embedded_model_dir
from adapterkit.hf.errors import BaseModelNotFoundError
from adapterkit.hf.hub import load_from_hub


def load_base(name_or_path: str | Path, dtype: torch.dtype = torch.float32):
    """Return `(model, tokenizer)` for a causal LM, in eval mode.

    `name_or_path` is one of:
      - "smollm2": the built-in SmolLM2-135M-Instruct (converted and cached on first use);
      - a local transformers folder (config.json + weights + tokenizer);
      - a Hugging Face Hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct".
    """
    name = str(name_or_path)
    if name == EMBEDDED_NAME:
        model, tokenizer = _load_folder(embedded_model_dir(), dtype)
        # Adapters record this as their base: the name to pass back to load_base, not a
        # cache path that differs from machine to machine.
        model.config._name_or_path = EMBEDDED_NAME
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _load_folder(Path(name).expanduser(), dtype)
    elif _looks_like_path(name):
        raise BaseModelNotFoundError(
            f"base model folder {name!r} does not exist; pass an existing transformers folder, "
            f"a Hugging Face Hub id, or {EMBEDDED_NAME!r}"
        )
    else:
        model, tokenizer = load_from_hub(name, dtype)
    if tokenizer.pad_token is None:
        # Batching needs a pad id; padded positions are masked, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name" or "name"; anything else with a separator is a path.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise BaseModelNotFoundError(
            f"{folder} holds no config.json, so it is not a transformers model folder; "
            f"save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer
