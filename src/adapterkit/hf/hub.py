"""Hugging Face Hub ids: load from the hub when it answers, from the local HF cache when not.

huggingface_hub retries an unreachable host for ~25 s before giving up; a
one-shot TCP probe decides up front, so an offline machine fails in seconds.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import torch

from adapterkit.hf.errors import HubUnreachableError

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def hub_offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub endpoint (HF_ENDPOINT) opens within `timeout_s`."""
    if hub_offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_from_hub(repo_id: str, dtype: torch.dtype, **extra):
    """(model, tokenizer) for `repo_id`; offline, only what the local HF cache already holds.
    `extra` goes to from_pretrained (a quantization_config, say)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, local_files_only=offline, **extra)
    except OSError as err:
        if not offline:
            raise
        raise HubUnreachableError(
            f"cannot load {repo_id!r}: the Hugging Face Hub is unreachable from this machine and "
            f"the model is not in the local Hugging Face cache; pass 'smollm2' (the built-in "
            f"base model) or the path of a local transformers folder instead"
        ) from err
    return model, tokenizer
