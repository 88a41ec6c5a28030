"""Held-out exact match: greedy generation, compared after stripping whitespace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterkit.training.collate import collate_prompts
from adapterkit.training.data import ChatExample
from adapterkit.training.encoding import encode_prompt


@dataclass
class EvalResult:
    correct: int
    total: int
    predictions: list[str]

    @property
    def exact_match(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer, prompts: Sequence[Sequence[dict[str, str]]],
                       max_new_tokens: int = 16, batch_size: int = 32, **generate_kwargs) -> list[str]:
    """Greedy replies to each chat in `prompts` (lists of messages), stripped."""
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = [encode_prompt(tokenizer, chat) for chat in prompts[start:start + batch_size]]
            inputs = collate_prompts(encoded, tokenizer.pad_token_id)
            # transformers models and AdapterModel have generate(); nn.Module's stubs do not know it.
            generate: Any = model.generate
            output = generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, **generate_kwargs,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, new)
            replies += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return replies


def exact_match(model: nn.Module, tokenizer, examples: Sequence[ChatExample], max_new_tokens: int = 16,
                batch_size: int = 32, **generate_kwargs) -> EvalResult:
    """Share of `examples` whose greedy reply equals the expected response (both stripped)."""
    predictions = generate_responses(
        model, tokenizer, [example.prompt_messages for example in examples], max_new_tokens, batch_size,
        **generate_kwargs,
    )
    correct = sum(pred == example.response.strip() for pred, example in zip(predictions, examples))
    return EvalResult(correct=correct, total=len(examples), predictions=predictions)
