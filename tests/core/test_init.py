"""core.init: PiSSA and OLoRA factors as pure functions of a weight."""

from __future__ import annotations

import pytest
import torch

from adapterkit.core.config import is_base_init
from adapterkit.core.init import base_init_factors, olora_factors, pissa_factors, residual


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16)])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_pissa_is_the_truncated_svd(shape, scale):
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    A, B = pissa_factors(weight, 5, scale)
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    best = U[:, :5] @ torch.diag(S[:5]) @ Vh[:5]
    assert torch.allclose(scale * B @ A, best, atol=1e-5)
    assert torch.allclose(A @ A.T, B.T @ B, atol=1e-5)  # the singular values are split evenly
    assert torch.allclose(residual(weight, A, B, scale) + scale * B @ A, weight, atol=1e-6)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_olora_is_the_leading_qr_block(shape):
    torch.manual_seed(1)
    weight = torch.randn(*shape)
    A, B = olora_factors(weight, 4)
    assert torch.allclose(B.T @ B, torch.eye(4), atol=1e-5)
    assert torch.allclose(torch.triu(A), A)
    Q, R = torch.linalg.qr(weight)
    assert torch.allclose(B @ A, Q[:, :4] @ R[:4], atol=1e-6)


def test_a_rank_above_the_matrix_rank_is_zero_padded():
    weight = torch.randn(3, 8)
    for init in ("pissa", "olora", "pissa_niter_2"):
        A, B = base_init_factors(init, weight, 6, 1.0)
        assert A.shape == (6, 8) and B.shape == (3, 6), init
        assert bool((A[3:] == 0).all()) and bool((B[:, 3:] == 0).all()), init
        assert torch.allclose(B @ A, weight, atol=1e-5), init  # rank 3 holds all of it


def test_which_values_read_the_base():
    assert all(is_base_init(v) for v in ("pissa", "olora", "pissa_niter_1", "pissa_niter_16"))
    assert not any(is_base_init(v) for v in (True, False, "gaussian", "pissa_niter_0", "pissa_niter_", "PiSSA", 3))
