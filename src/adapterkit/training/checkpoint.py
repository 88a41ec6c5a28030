"""Training checkpoints: the adapter folder, and the trainer's state in one file beside it.

    out/checkpoint-000040/                  model.save_pretrained (a loadable adapter)
    out/checkpoint-000040.trainer_state.pt  step, trainable tensors, optimizer, scheduler, RNG

The state file is written last and atomically, so a checkpoint is complete
exactly when its state file exists. It carries the trainable tensors itself,
so resuming works for any nn.Module and reproduces them bit for bit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from adapterkit.training.errors import CheckpointError

STATE_SUFFIX = ".trainer_state.pt"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:06d}"


def state_path(ckpt_dir: str | Path) -> Path:
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir.with_name(ckpt_dir.name + STATE_SUFFIX)


def save_checkpoint(model: nn.Module, ckpt_dir: str | Path, state: dict) -> Path:
    """Write the adapter (if the model can save itself), then the trainer state."""
    ckpt_dir = Path(ckpt_dir)
    save_pretrained = getattr(model, "save_pretrained", None)  # AdapterModel, PeftModel: a loadable folder
    if save_pretrained is not None:
        save_pretrained(ckpt_dir)
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    target = state_path(ckpt_dir)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ckpt_dir


def load_checkpoint_state(ckpt_dir: str | Path) -> dict:
    target = state_path(ckpt_dir)
    if not target.is_file():
        raise CheckpointError(
            f"{ckpt_dir} is not a complete checkpoint: {target.name} is missing beside it; "
            f"resume from another checkpoint-NNNNNN folder or pass resume_from='latest'"
        )
    return torch.load(target, map_location="cpu", weights_only=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and state_path(path).is_file()
    ]
    return max(complete)[1] if complete else None
