"""Real PEFT-format folders on disk, for the store tests (and the store benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

FINGERPRINT_A = {
    "adapterkit.base.architecture": "LlamaForCausalLM",
    "adapterkit.base.fingerprint": "a" * 32,
    "adapterkit.base.shapes_sha256": "1" * 64,
    "adapterkit.base.name": "tiny-base-a",
}
FINGERPRINT_B = {**FINGERPRINT_A, "adapterkit.base.fingerprint": "b" * 32, "adapterkit.base.name": "tiny-base-b"}


def write_peft_folder(folder: Path, seed: int, *, r: int = 4, hidden: int = 16, layers: int = 2,
                      targets: tuple[str, ...] = ("q_proj", "v_proj"), base: dict | None = None,
                      alpha: int = 8) -> Path:
    """A PEFT LoRA folder as `save_pretrained` writes it: config JSON + safetensors with PEFT keys."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, hidden), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, r), dtype=np.float32)
    metadata = {"format": "pt", **(base or {})}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata=metadata)
    config = {
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets),
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def gc_once_the_holder_is_gone(store, timeout_s: float = 60.0) -> int:
    """Blobs gc deletes, retrying until it deletes some (bounded): PostgreSQL drops a dead client's
    session a moment after its socket closes, longer on a loaded machine (SQLite checks the pid at once)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        deleted = store.gc(grace_s=0).blobs_deleted
        if deleted or time.monotonic() > deadline:
            return deleted
        time.sleep(0.05)
