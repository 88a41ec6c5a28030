"""core.combine's merging rules checked as properties, against loops written out by hand:
DARE keeps a `density` fraction and rescales by 1/density; magnitude pruning keeps the
largest entries; TIES elects a sign per entry ("total" or "frequency") and averages the
tasks that agree with it."""

from __future__ import annotations

import pytest
import torch

from adapterkit.core.combine import (
    Factors,
    combine_factors,
    magnitude_prune,
    majority_sign_mask,
    merge_tensors,
    random_prune,
)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_drops_one_minus_density_and_rescales(density):
    torch.manual_seed(0)
    tensor = torch.randn(200, 500) + 3.0  # no zeros to begin with
    pruned = random_prune(tensor, density)
    kept = pruned != 0
    assert abs(kept.float().mean().item() - density) < 0.01  # 100,000 draws: ±0.5% at 3σ
    assert torch.allclose(pruned[kept], tensor[kept] / density)
    # Rescaling keeps the expected value: the mean over entries is close to the original's.
    assert abs(pruned.mean().item() - tensor.mean().item()) < 0.05 * tensor.mean().item()


@pytest.mark.parametrize("density", [0.0, 0.25, 0.5, 1.0])
def test_magnitude_prune_keeps_the_largest_entries(density):
    torch.manual_seed(1)
    tensor = torch.randn(7, 13)
    pruned = magnitude_prune(tensor, density)
    keep = int(density * tensor.numel())
    assert int((pruned != 0).sum()) == keep
    if 0 < keep < tensor.numel():
        smallest_kept = tensor[pruned != 0].abs().min()
        assert bool((tensor[pruned == 0].abs() <= smallest_kept).all())


def _elect_by_hand(stack: torch.Tensor, method: str) -> torch.Tensor:
    n, rows, cols = stack.shape
    elected = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            values = [stack[k, i, j].item() for k in range(n)]
            if method == "total":
                score = sum(values)
            else:
                score = sum((v > 0) - (v < 0) for v in values)
            elected[i, j] = 1 if score >= 0 else -1
    return elected


@pytest.mark.parametrize("method", ["total", "frequency"])
def test_ties_elects_a_sign_and_averages_the_agreeing_tasks(method):
    torch.manual_seed(2)
    tasks = [torch.randn(5, 6) * s for s in (1.0, 0.2, 0.3)]  # one large task, two small ones
    weights = torch.tensor([0.5, 2.0, 1.0])
    merged = merge_tensors("ties", tasks, weights, density=1.0, sign_method=method)
    stack = torch.stack(tasks)
    elected = _elect_by_hand(stack, method)
    assert torch.equal(majority_sign_mask(stack, method), stack.sign() == elected)
    for i in range(5):
        for j in range(6):
            agreeing = [weights[k].item() * stack[k, i, j].item() for k in range(3)
                        if stack[k, i, j].sign() == elected[i, j]]
            expected = sum(agreeing) / max(len(agreeing), 1)
            assert abs(merged[i, j].item() - expected) < 1e-6
    # The two methods disagree somewhere on this input (the large task outvotes two small ones).
    other = "frequency" if method == "total" else "total"
    assert not torch.equal(_elect_by_hand(stack, method), _elect_by_hand(stack, other))


def test_dare_ties_prunes_then_elects():
    torch.manual_seed(3)
    tasks = [torch.randn(40, 50) for _ in range(2)]
    weights = torch.tensor([1.0, 1.0])
    torch.manual_seed(9)
    merged = merge_tensors("dare_ties", tasks, weights, density=0.3)
    torch.manual_seed(9)
    pruned = [random_prune(t, 0.3) for t in tasks]  # the same masks, drawn in the same order
    assert torch.equal(merged, merge_tensors("ties", pruned, weights, density=1.0))


def test_factor_combination_puts_the_sign_on_A_only():
    A, B = torch.randn(3, 8), torch.randn(5, 3)
    part = Factors(A, B, scale=2.0)
    new_A, new_B = combine_factors("linear", [part], [-0.5], rank=3)
    # weight·scale = -1: A takes the sign, both take √1.
    assert torch.allclose(new_A, -A) and torch.allclose(new_B, B)
    assert torch.allclose(new_B @ new_A, -0.5 * 2.0 * (B @ A))


def test_svd_pads_a_rank_above_the_matrix_rank_with_zeros():
    A, B = torch.randn(2, 4), torch.randn(3, 2)  # ΔW is 3 x 4, rank ≤ 3
    new_A, new_B = combine_factors("svd", [Factors(A, B, 1.0)], [1.0], rank=6)
    assert new_A.shape == (6, 4) and new_B.shape == (3, 6)
    assert torch.allclose(new_B @ new_A, B @ A, atol=1e-5)
    assert bool((new_A[3:] == 0).all()) and bool((new_B[:, 3:] == 0).all())


def test_a_tied_vote_elects_plus():
    """Two tasks of opposite signs: "frequency" ties at 0, and PEFT's rule elects +."""
    tasks = [torch.tensor([[2.0, -1.0]]), torch.tensor([[-3.0, 4.0]])]
    merged = merge_tensors("ties", tasks, torch.tensor([1.0, 1.0]), density=1.0, sign_method="frequency")
    assert torch.equal(merged, torch.tensor([[2.0, 4.0]]))
    total = merge_tensors("ties", [tasks[0], -tasks[0]], torch.tensor([1.0, 1.0]), density=1.0, sign_method="total")
    assert torch.equal(total, torch.tensor([[2.0, 1.0]]))  # sums of 0: + is elected, the positive entry kept
