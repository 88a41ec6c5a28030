"""Which examples each micro-batch takes: a fresh seeded permutation per epoch.

The order is a pure function of (seed, micro-batch number), so a resumed run
needs no sampler state to continue exactly where it stopped.
"""

from __future__ import annotations

import torch


class ExampleOrder:
    def __init__(self, num_examples: int, seed: int) -> None:
        if num_examples < 1:
            raise ValueError("training needs at least one example")
        self.num_examples = num_examples
        self.seed = seed
        self._epochs: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs[epoch] = torch.randperm(self.num_examples, generator=generator).tolist()
        return self._epochs[epoch]

    def micro_batch(self, number: int, size: int) -> list[int]:
        """Example indices of micro-batch `number` (0-based) of `size` examples."""
        start = number * size
        return [self._epoch(p // self.num_examples)[p % self.num_examples] for p in range(start, start + size)]
