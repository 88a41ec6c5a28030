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


# Building a combination takes three steps, so the engine keeps decoding through the
# arithmetic (40 to 300 ms for two rank-8 adapters on SmolLM2's q, k, v, o on this CPU):
# gather (engine thread: checks, and the source factors), compute (a worker thread: tensors
# only; the sources stay leased, so nothing deletes or rewrites them), install (engine thread).
def gatherer(definition: CombinationDefinition, source_adapters: Sequence[str], internal: str) -> Callable:
    """fn(model) for the engine thread: check the combination of the loaded `source_adapters` and
    collect their factors. Raises AdapterCombinationError, the model unchanged, if they do not combine."""
    from adapterkit.model.combine import gather_combination

    def gather(model):
        return gather_combination(model, list(source_adapters), list(definition.weights), internal,
                                  definition.strategy, density=definition.density,
                                  majority_sign_method=definition.majority_sign_method or "total")
    return gather


def compute(definition: CombinationDefinition, inputs):
    """The combination's factors (any thread), DARE's masks drawn from the definition's seed."""
    from adapterkit.model.combine import compute_seeded_factors

    return compute_seeded_factors(inputs, definition.seed or 0)


def installer(internal: str, plan) -> Callable:
    """fn(model) for the engine thread: add the computed combination as adapter `internal`."""
    from adapterkit.model.combine import install_combination

    return lambda model: install_combination(model, internal, plan)
