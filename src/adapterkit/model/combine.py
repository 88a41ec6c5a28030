"""`add_weighted_adapter`: a new adapter from a weighted combination of loaded ones.

The shell around core.combine: it checks every argument and every module first
(nothing changes on an error), computes all factors, and only then installs the
new adapter through the model's ordinary add path, so it is saved, switched and
merged like any other adapter.

Differences from PEFT 0.21.2, on purpose:
- an existing `adapter_name` is an error (PEFT returns silently, keeping the old one);
- the new adapter's config has use_rslora=False. PEFT copies use_rslora from the first
  adapter, so its combination is then scaled by √r instead of 1;
- a module adapted by a source adapter but not targeted by the new config (possible
  when the adapters' layers_to_transform or exclude_modules differ) is an error: PEFT
  drops that part of the adapter silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

import torch

from adapterkit.core.combine import (
    COMBINATION_TYPES,
    DENSITY_TYPES,
    FACTOR_TYPES,
    SIGN_METHODS,
    SIGN_TYPES,
    Factors,
    combine_factors,
)
from adapterkit.core.config import LoraConfig
from adapterkit.errors import AdapterCombinationError, AdapterExistsError

if TYPE_CHECKING:
    from adapterkit.model.adapter_model import AdapterModel


@dataclass
class CombinationPlan:
    config: LoraConfig
    targets: list  # TargetedModule
    saved: list[str]
    factors: dict[str, dict[str, torch.Tensor]]  # module -> {"A", "B"}


@dataclass
class CombinationInputs:
    """A checked combination, before any arithmetic: which source factors combine at each module.

    The factors are the loaded adapters' own tensors (no copies), so computing from them
    needs the sources to stay loaded and unchanged until compute_factors returns."""

    config: LoraConfig
    targets: list  # TargetedModule
    saved: list[str]
    combination_type: str
    parts: dict[str, tuple[list[Factors], list[float], bool]]  # module -> (factors, weights, transposed layout)
    density: float | None
    majority_sign_method: str
    svd_clamp: float | None
    svd_full_matrices: bool
    svd_driver: str | None


# torch's default generator is process-wide: seeded computes running at once (a server's
# worker threads) would interleave their draws, so they take turns.
_SEEDED_DRAWS = threading.Lock()


def add_weighted_adapter(model: AdapterModel, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None, svd_clamp: float | None = None,
                         svd_full_matrices: bool = True, svd_driver: str | None = None, density: float | None = None,
                         majority_sign_method: str = "total") -> None:
    plan = plan_combination(model, adapters, weights, adapter_name, combination_type, svd_rank, svd_clamp,
                            svd_full_matrices, svd_driver, density, majority_sign_method)
    install_combination(model, adapter_name, plan)


def install_combination(model: AdapterModel, adapter_name: str, plan: CombinationPlan) -> None:
    # As in PEFT, the new adapter is not made active; it trains once activated, unless the
    # first adapter was loaded for inference only.
    model._install(adapter_name, plan.config, plan.targets, plan.saved, not plan.config.inference_mode,
                   None, False, factors=plan.factors)


def combination_name(adapters: Sequence[str], weights: Sequence[float], combination_type: str = "linear",
                     density: float | None = None, majority_sign_method: str = "total", svd_rank: int | None = None,
                     seed: int = 0) -> str:
    """A name that is a function of the combination's definition (LoRAX's merged_adapters: ids,
    weights, strategy, density), so a server can cache a combination per definition."""
    numbers = [float(w) if isinstance(w, Real) and not isinstance(w, bool) else repr(w) for w in weights]
    definition = json.dumps([list(adapters), numbers, combination_type, density, majority_sign_method, svd_rank,
                             seed], sort_keys=True, default=repr)  # bad values get a name; the add refuses them
    return "combination-" + hashlib.sha256(definition.encode()).hexdigest()[:16]


def add_seeded_weighted_adapter(model: AdapterModel, adapters: Sequence[str], weights: Sequence[float],
                                adapter_name: str, combination_type: str = "linear", density: float | None = None,
                                majority_sign_method: str = "total", svd_rank: int | None = None,
                                seed: int = 0) -> None:
    """add_weighted_adapter with DARE's random masks drawn from `seed` (compute_seeded_factors):
    the same arguments give the same adapter on every model."""
    inputs = gather_combination(model, adapters, weights, adapter_name, combination_type, svd_rank,
                                density=density, majority_sign_method=majority_sign_method)
    install_combination(model, adapter_name, compute_seeded_factors(inputs, seed))


def ensure_weighted_adapter(model: AdapterModel, adapters: Sequence[str], weights: Sequence[float],
                            combination_type: str = "linear", density: float | None = None,
                            majority_sign_method: str = "total", svd_rank: int | None = None, seed: int = 0) -> str:
    """The name of the combination with this definition, added on first use and reused after
    (built by add_seeded_weighted_adapter). The name covers the definition, not the source
    weights: delete the combination when a source changes.
    """
    name = combination_name(adapters, weights, combination_type, density, majority_sign_method, svd_rank, seed)
    if name not in model.peft_config:
        add_seeded_weighted_adapter(model, adapters, weights, name, combination_type, density, majority_sign_method,
                                    svd_rank, seed)
    return name


def plan_combination(model: AdapterModel, adapters, weights, adapter_name, combination_type="svd", svd_rank=None,
                     svd_clamp=None, svd_full_matrices=True, svd_driver=None, density=None,
                     majority_sign_method="total") -> CombinationPlan:
    """Check everything and compute the new adapter's factors, without changing the model."""
    return compute_factors(gather_combination(model, adapters, weights, adapter_name, combination_type, svd_rank,
                                              svd_clamp, svd_full_matrices, svd_driver, density, majority_sign_method))


def compute_factors(inputs: CombinationInputs) -> CombinationPlan:
    """The arithmetic of a combination: tensors only, so it may run off the thread that owns the
    model (a server's engine keeps decoding meanwhile). DARE draws from torch's default generator."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, (parts, weights, transposed) in inputs.parts.items():
            A, B = combine_factors(inputs.combination_type, parts, weights, inputs.config.r, inputs.density,
                                   inputs.majority_sign_method, inputs.svd_clamp, inputs.svd_full_matrices,
                                   inputs.svd_driver, transposed_layout=transposed)
            factors[name] = {"A": A, "B": B}
    return CombinationPlan(inputs.config, inputs.targets, inputs.saved, factors)


def compute_seeded_factors(inputs: CombinationInputs, seed: int) -> CombinationPlan:
    """compute_factors with DARE's masks drawn from `seed` in a forked random state: the same
    inputs give the same factors, and the caller's random state is left as it was."""
    with _SEEDED_DRAWS, torch.random.fork_rng():
        torch.manual_seed(seed)
        return compute_factors(inputs)


def gather_combination(model: AdapterModel, adapters, weights, adapter_name, combination_type="svd", svd_rank=None,
                       svd_clamp=None, svd_full_matrices=True, svd_driver=None, density=None,
                       majority_sign_method="total") -> CombinationInputs:
    """Check everything and collect the source factors of each module, without changing the model."""
    from adapterkit.model.adapter_model import _check_name

    if adapter_name in model.peft_config:
        raise AdapterExistsError(
            f"An adapter named {adapter_name!r} is already loaded; pick another name for the combination, "
            f"or delete_adapter({adapter_name!r}) first.")
    _check_name(adapter_name)
    adapters, weights = _check_adapters_and_weights(model, adapters, weights)
    if combination_type not in COMBINATION_TYPES:
        raise AdapterCombinationError(
            f"combination_type={combination_type!r} is unknown; use one of {', '.join(COMBINATION_TYPES)}.")
    if len(adapters) == 1:
        combination_type = "linear"  # PEFT's rule: one adapter can only be rescaled
    check_options(combination_type, density, majority_sign_method, svd_rank, svd_clamp)

    config = combined_config(adapters, [model.peft_config[name] for name in adapters], combination_type, svd_rank)
    new_rank = config.r
    targets, saved = model._targets_for(config)
    _check_saved_modules(model, adapters)

    loras = model._loras()
    target_names = {t.name for t in targets}
    outside = sorted(path for path, lora in loras.items()
                     if path not in target_names and any(lora.has(n) for n in adapters))
    if outside:
        raise AdapterCombinationError(
            f"{outside[:3]} carry some of {adapters} but the combined config (the first adapter's, with the "
            "union of target_modules) does not target them, so part of an adapter would be lost. Give the "
            "adapters the same layers_to_transform / exclude_modules, or combine them in another order.")
    parts: dict[str, tuple[list[Factors], list[float], bool]] = {}
    for target in targets:
        lora = loras.get(target.name)
        present = [(n, w) for n, w in zip(adapters, weights) if lora is not None and lora.has(n)]
        if not present:
            raise AdapterCombinationError(
                f"{target.name} is targeted by the combined config but none of {adapters} adapts it; "
                "combine adapters whose target_modules cover the same modules.")
        if combination_type in FACTOR_TYPES:
            wrong = [n for n, _ in present if lora.info[n].rank != new_rank]
            if wrong:
                raise AdapterCombinationError(
                    f"combination_type={combination_type!r} needs the same rank {new_rank} at every module, "
                    f"but {wrong} have rank {lora.info[wrong[0]].rank} at {target.name}; use 'cat' or an "
                    "'*_svd' type for adapters of different ranks.")
        parts[target.name] = ([Factors(lora.lora_A[n].detach(), lora.lora_B[n].detach(), lora.info[n].scale)
                               for n, _ in present], [w for _, w in present], not lora.kind.weight_is_out_in)
    return CombinationInputs(config, targets, saved, combination_type, parts, density, majority_sign_method,
                             svd_clamp, svd_full_matrices, svd_driver)


def combined_config(adapters: Sequence[str], configs: Sequence[LoraConfig], combination_type: str,
                    svd_rank: int | None = None, type_field: str = "combination_type",
                    other_ranks_fix: str = "Use 'cat' or an '*_svd' type.") -> LoraConfig:
    """The combination's config, from its sources' configs alone (the first one's, with the union of
    targets and the new rank). Refuses what the configs already rule out: DoRA adapters, ranks a
    factor type cannot combine, targets given in two forms. The server runs it before loading any
    source; plan_combination runs it on the loaded adapters, then checks them module by module.
    `type_field` and `other_ranks_fix` word the errors for the caller's own interface."""
    dora = [a for a, c in zip(adapters, configs) if c.use_dora]
    if dora:
        raise AdapterCombinationError(
            f"{dora} are DoRA adapters (use_dora=True): their magnitude vectors have no weighted combination, "
            "and combining only their A and B would silently drop them. Combine plain LoRA adapters.")
    new_rank = _new_rank(combination_type, adapters, configs, svd_rank, type_field, other_ranks_fix)
    return dataclasses.replace(
        LoraConfig.from_dict(configs[0].to_dict()), r=new_rank, lora_alpha=new_rank,
        target_modules=_union_of_targets(adapters, configs), rank_pattern={}, alpha_pattern={},
        use_rslora=False, init_lora_weights=True)


def _check_adapters_and_weights(model, adapters, weights) -> tuple[list[str], list[float]]:
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise AdapterCombinationError(
            f"adapters must be a non-empty list of adapter names, got {adapters!r}.")
    adapters = model._check_known(list(adapters))  # UnknownAdapterError names the loaded ones
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(adapters):
        raise AdapterCombinationError(
            f"weights must be a list with one number per adapter ({len(adapters)} for {adapters}), got {weights!r}.")
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w)]
    if bad:
        raise AdapterCombinationError(f"weights must be finite numbers; {bad} are not.")
    return adapters, [float(w) for w in weights]


def check_options(combination_type, density, sign_method, svd_rank=None, svd_clamp=None) -> None:
    """The checks that need no model (the CLI runs them before loading anything)."""
    if combination_type in DENSITY_TYPES or density is not None:
        if density is None:
            raise AdapterCombinationError(
                f"combination_type={combination_type!r} prunes the adapters: pass density, the fraction of "
                "entries to keep, in (0, 1].")
        if isinstance(density, bool) or not isinstance(density, Real) or not 0 < float(density) <= 1:
            raise AdapterCombinationError(
                f"density must be a number in (0, 1] (the fraction of entries kept), got {density!r}.")
    if combination_type in SIGN_TYPES and sign_method not in SIGN_METHODS:
        raise AdapterCombinationError(
            f"majority_sign_method must be one of {SIGN_METHODS}, got {sign_method!r}.")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank <= 0):
        raise AdapterCombinationError(f"svd_rank must be a positive integer or None, got {svd_rank!r}.")
    if svd_clamp is not None and (isinstance(svd_clamp, bool) or not isinstance(svd_clamp, Real)
                                  or not 0 <= float(svd_clamp) <= 1):
        raise AdapterCombinationError(f"svd_clamp must be a quantile in [0, 1] or None, got {svd_clamp!r}.")


def _rank_of(config: LoraConfig) -> int:
    """The largest rank an adapter has at any module."""
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def _new_rank(combination_type, adapters, configs, svd_rank, type_field="combination_type",
              other_ranks_fix="Use 'cat' or an '*_svd' type.") -> int:
    ranks = [_rank_of(c) for c in configs]
    if combination_type in FACTOR_TYPES:
        if len(set(ranks)) != 1:
            raise AdapterCombinationError(
                f"{type_field}={combination_type!r} combines A and B factors entry by entry, so every "
                f"adapter needs the same rank; {dict(zip(adapters, ranks))} differ. {other_ranks_fix}")
        return ranks[0]
    if combination_type == "cat":
        return sum(ranks)
    return svd_rank or max(ranks)


def _union_of_targets(adapters, configs):
    kinds = {isinstance(c.target_modules, str) for c in configs}
    if len(kinds) > 1:
        raise AdapterCombinationError(
            f"{adapters} mix target_modules given as a regex string and as a list; the combined target set cannot "
            "be written as one. Load them with target_modules of one form.")
    if kinds == {True}:
        return "|".join(f"({c.target_modules})" for c in configs)
    return sorted({name for c in configs for name in (c.target_modules or [])})


def _check_saved_modules(model, adapters) -> None:
    shared = [path for path, wrapper in model._saved().items()
              if sum(name in wrapper.modules_to_save for name in adapters) > 1]
    if shared:
        raise AdapterCombinationError(
            f"{adapters} each train their own copy of {shared[:3]} (modules_to_save); whole modules cannot be "
            "combined by weight. Combine adapters of which at most one has a copy of each module.")
