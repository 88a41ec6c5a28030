"""Learning-rate schedule: linear warm-up, then cosine or linear decay."""

from __future__ import annotations

import math

import torch

DECAYS = ("cosine", "linear")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, decay: str = "cosine", floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Rises linearly over `warmup_steps` to 1, then falls to `floor` at `total_steps`.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


def warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                      decay: str = "cosine", floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    lr_multiplier(0, warmup_steps, total_steps, decay, floor)  # validate before building
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, decay, floor)
    )
