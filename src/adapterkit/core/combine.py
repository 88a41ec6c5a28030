"""Weighted combinations of LoRA adapters at one module: tensors in, factors out.

PEFT's `add_weighted_adapter` (0.21.2), reimplemented over plain tensors so the math
can be read and tested apart from any model. Every operation runs in PEFT's order,
so results are bit-identical given the same inputs (and, for DARE, the same torch
random state).

Two families:
- factor types ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
  combine the A factors and the B factors separately, each with weight √|w·s|
  (the sign goes on A only). Cheap, but B·A of the result is not Σ w B_i A_i.
- SVD types ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd",
  "magnitude_prune_svd") combine the full ΔW_i = s_i B_i A_i and factor the result
  back to the requested rank with an SVD: exact up to truncation.
"cat" stacks the factors (rank = Σ r_i): exactly Σ w_i s_i B_i A_i.

Task-vector merging methods: TIES (Yadav et al. 2023, arXiv:2306.01708), DARE
(Yu et al. 2023, arXiv:2311.03099).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = ("cat", *FACTOR_TYPES, *SVD_TYPES)
# The types that prune (and so need `density`) and those that elect a sign per entry.
DENSITY_TYPES = ("ties", "dare_linear", "dare_ties", "magnitude_prune",
                 "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
SIGN_TYPES = ("ties", "dare_ties", "ties_svd", "dare_ties_svd")
SIGN_METHODS = ("total", "frequency")

# combination type -> how the per-adapter tensors are merged
_MERGE_OF = {
    "linear": "sum", "svd": "sum",
    "ties": "ties", "ties_svd": "ties",
    "dare_linear": "dare_linear", "dare_linear_svd": "dare_linear",
    "dare_ties": "dare_ties", "dare_ties_svd": "dare_ties",
    "magnitude_prune": "magnitude_prune", "magnitude_prune_svd": "magnitude_prune",
}


@dataclass(frozen=True)
class Factors:
    """One adapter at one module: A (r, in), B (out, r), and its scale s (ΔW = s·B·A)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float


# --- merging a stack of same-shaped tensors --------------------------------------------
def magnitude_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density·n) entries of largest magnitude, zero the rest."""
    mask = torch.zeros_like(tensor).reshape(-1)
    keep = int(density * tensor.numel())
    top = torch.topk(tensor.abs().reshape(-1), k=keep, largest=True)
    mask[top[1]] = 1
    return tensor * mask.reshape(tensor.shape)


def random_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, and rescale the kept ones by
    1/density so the expected value is unchanged. Draws from torch's global generator."""
    mask = torch.bernoulli(torch.full_like(input=tensor, fill_value=density))
    return tensor * mask / density


def _prune(tensor: torch.Tensor, density: float, method: str) -> torch.Tensor:
    if density >= 1:  # nothing to drop (PEFT warns and returns the tensor as is)
        return tensor
    return magnitude_prune(tensor, density) if method == "magnitude" else random_prune(tensor, density)


def majority_sign_mask(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """Per entry, True where a task's sign agrees with the elected sign. "total" elects the
    sign of the sum of values; "frequency" the sign held by most tasks (ties go to +)."""
    sign = stacked.sign()
    magnitude = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    elected = torch.where(magnitude >= 0, 1, -1)
    return sign == elected


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.view(weights.shape + (1,) * (stacked.dim() - weights.dim()))


def merge_tensors(method: str, tensors: Sequence[torch.Tensor], weights: torch.Tensor,
                  density: float | None = None, sign_method: str = "total") -> torch.Tensor:
    """Merge same-shaped task tensors with `weights` by `method`: "sum" (task arithmetic),
    "magnitude_prune", "ties", "dare_linear" or "dare_ties"."""
    if method in ("magnitude_prune", "ties"):
        assert density is not None  # callers validate
        tensors = [_prune(t, density, "magnitude") for t in tensors]
    elif method in ("dare_linear", "dare_ties"):
        assert density is not None
        tensors = [_prune(t, density, "random") for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)  # (n, *shape)
    if method in ("ties", "dare_ties"):
        mask = majority_sign_mask(stacked, sign_method)  # elected on the unweighted, pruned tensors
        weighted = _weighted(stacked, weights)
        # Disjoint mean: average each entry over the tasks that agree with the elected sign.
        return (weighted * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)
    return _weighted(stacked, weights).sum(dim=0)


# --- one module's combined factors ------------------------------------------------------
def combine_factors(combination_type: str, parts: Sequence[Factors], weights: Sequence[float], rank: int,
                    density: float | None = None, sign_method: str = "total", svd_clamp: float | None = None,
                    svd_full_matrices: bool = True, svd_driver: str | None = None,
                    transposed_layout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the combined adapter at one module, shapes (rank, in) and (out, rank), for
    a scale of 1. `parts` are the adapters present at this module, `weights` theirs.
    Ranks that come out smaller than `rank` are zero-padded.

    `transposed_layout`: the base weight is stored (in, out) (Conv1D, Embedding). The SVD
    types then build each ΔW in that layout before pruning, as PEFT does, so DARE's random
    masks fall on the same entries for the same random state."""
    assert parts and len(parts) == len(weights), "callers pass one weight per adapter present"
    if combination_type == "cat":
        # (A_i · w_i) · s_i, in PEFT's order of operations.
        A = torch.cat([p.A * w * p.scale for p, w in zip(parts, weights)], dim=0)  # (Σr, in)
        B = torch.cat([p.B for p in parts], dim=1)  # (out, Σr)
    elif combination_type in FACTOR_TYPES:
        A, B = _combine_each_factor(_MERGE_OF[combination_type], parts, weights, density, sign_method)
    else:
        A, B = _combine_by_svd(_MERGE_OF[combination_type], parts, weights, rank, density, sign_method,
                               svd_clamp, svd_full_matrices, svd_driver, transposed_layout)
    return _pad_rows(A, rank), _pad_rows(B.T, rank).T


def _combine_each_factor(method, parts, weights, density, sign_method):
    weights_A, weights_B = [], []
    for part, weight in zip(parts, weights):
        # √|w·s| on both factors, the sign on A only (else a negative weight would cancel out).
        scaled = weight * part.scale
        weights_A.append(math.sqrt(abs(scaled)) * (1 if scaled >= 0 else -1))
        weights_B.append(math.sqrt(abs(scaled)))
    dtype, device = parts[0].A.dtype, parts[0].A.device
    A = merge_tensors(method, [p.A for p in parts], torch.tensor(weights_A).to(device), density, sign_method)
    B = merge_tensors(method, [p.B for p in parts], torch.tensor(weights_B).to(device), density, sign_method)
    return A.to(dtype), B.to(dtype)


def _combine_by_svd(method, parts, weights, rank, density, sign_method, clamp, full_matrices, driver, transposed):
    deltas = [((p.B @ p.A).T if transposed else p.B @ p.A) * p.scale for p in parts]  # each (out, in) or (in, out)
    if deltas[0].dtype not in (torch.float32, torch.float64):
        deltas = [d.float() for d in deltas]  # no half-precision SVD on CPU
    delta = merge_tensors(method, deltas, torch.tensor(list(weights)).to(deltas[0].device), density, sign_method)
    delta = delta.T if transposed else delta  # (out, in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices, driver=driver)
    k = min(rank, S.shape[0])  # a rank above min(out, in) adds nothing: padded with zeros below
    U = U[:, :k] @ torch.diag(S[:k])  # (out, k): the singular values go on B's side
    Vh = Vh[:k, :]  # (k, in)
    if clamp is not None:
        # Clip outliers at the `clamp` quantile of all entries (kohya-ss's svd_merge_lora).
        high = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U = U.clamp(-high, high)
        Vh = Vh.clamp(-high, high)
    return Vh, U


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    padded = t.new_zeros(rows, *t.shape[1:])
    padded[: t.shape[0]] = t
    return padded
