"""Padding token lists into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adapterkit.training.encoding import IGNORE_INDEX, EncodedExample


def pad_sequences(rows: Sequence[Sequence[int]], pad_value: int, side: str) -> torch.Tensor:
    """(B, T) tensor of `rows`, padded on `side` ("left" or "right") to the longest row."""
    if side not in ("left", "right"):
        raise ValueError(f'padding side must be "left" or "right", got {side!r}')
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        if side == "left":
            out[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        else:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def attention_mask_for(rows: Sequence[Sequence[int]], side: str) -> torch.Tensor:
    return pad_sequences([[1] * len(row) for row in rows], 0, side)


def collate_training(batch: Sequence[EncodedExample], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels for a causal-LM loss; padding is never learned."""
    ids = [example.input_ids for example in batch]
    return {
        "input_ids": pad_sequences(ids, pad_id, side),
        "attention_mask": attention_mask_for(ids, side),
        "labels": pad_sequences([example.labels for example in batch], IGNORE_INDEX, side),
    }


def collate_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts, so that every row's generated tokens start at the same column."""
    return {"input_ids": pad_sequences(prompts, pad_id, "left"), "attention_mask": attention_mask_for(prompts, "left")}
