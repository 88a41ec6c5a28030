"""Per-request sampling: greedy, temperature, top-p, seeded.

Each sequence carries its own torch.Generator, so a seeded request draws the same
tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        else:
            self.generator.seed()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: torch.Tensor, params: list[SamplingParams]) -> list[int]:
    """One token per row of `logits` (rows, vocab), as each row's params say."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1).tolist()  # greedy rows are done; one call for all of them
    for row, p in enumerate(params):
        if not p.greedy:
            chosen[row] = _draw(logits[row], p)
    return chosen


def _draw(logits: torch.Tensor, p: SamplingParams) -> int:
    probs = torch.softmax(logits.cpu() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one).
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= p.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=p.generator))
