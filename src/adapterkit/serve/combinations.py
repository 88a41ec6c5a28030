"""A request's `merged_adapters`, as a definition the server can cache by.

Two requests share one combined adapter exactly when their definitions are equal:
the source adapters at their exact versions (a store ref resolved to `name@N`, a
named adapter with the registration it was loaded under, so replacing it gives a
new definition), the weights, the strategy, and only the options that strategy
reads (density for the pruning types, the sign method for the TIES types, the seed
for DARE's random masks). The order of `ids` is part of the definition: PEFT's
combination takes its config from the first adapter and draws DARE's masks in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from adapterkit.core.combine import DENSITY_TYPES, SIGN_TYPES
from adapterkit.serve.protocol import MergedAdapters

# Resident keys of combinations start with this; adapter names may not (serve/adapters.py).
COMBINATION_KEY_PREFIX = "merged:"
_RANDOM_TYPES = ("dare_linear", "dare_ties")


@dataclass(frozen=True)
class CombinationDefinition:
    sources: tuple[str, ...]  # each source's exact version, in the request's order
    weights: tuple[float, ...]
    strategy: str
    density: float | None  # None where the strategy prunes nothing
    majority_sign_method: str | None  # None where the strategy elects no sign
    seed: int | None  # None where the strategy draws nothing

    @classmethod
    def of(cls, request: MergedAdapters, versions: Sequence[str]) -> CombinationDefinition:
        strategy = request.merge_strategy or "linear"
        # One adapter can only be rescaled (PEFT combines it linearly whatever the type), and LoRAX
        # clients send density with every strategy: options the result does not read are dropped,
        # so they cannot split one combination into several cache entries.
        if len(versions) == 1:
            strategy = "linear"
        return cls(sources=tuple(versions), weights=tuple(float(w) for w in request.weights or ()),
                   strategy=strategy,
                   density=float(request.density) if strategy in DENSITY_TYPES and request.density is not None else None,
                   majority_sign_method=(request.majority_sign_method or "total") if strategy in SIGN_TYPES else None,
                   seed=request.seed if strategy in _RANDOM_TYPES else None)

    def canonical(self) -> str:
        """Sorted, compact JSON: equal definitions give equal text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return COMBINATION_KEY_PREFIX + hashlib.sha256(self.canonical().encode()).hexdigest()[:24]


def combiner(definition: CombinationDefinition, source_adapters: Sequence[str], internal: str) -> Callable:
    """fn(model) for the engine thread: add the combination of the loaded `source_adapters` as
    `internal`. Everything is checked before the model changes (an AdapterCombinationError
    leaves it as it was)."""
    from adapterkit.model.combine import add_seeded_weighted_adapter

    def build(model) -> None:
        add_seeded_weighted_adapter(model, list(source_adapters), list(definition.weights), internal,
                                    definition.strategy, density=definition.density,
                                    majority_sign_method=definition.majority_sign_method or "total",
                                    seed=definition.seed or 0)
    return build
