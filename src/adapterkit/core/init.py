"""Initialisations that read the base weight: PiSSA and OLoRA (torch only).

Both put the base weight's principal part into the adapter and leave the rest, the
residual, in the base, so that at init  W_res + s·B·A = W  (outputs unchanged):
- PiSSA (Meng et al. 2024, arXiv:2404.02948): the top-r singular triplets of
  W = V·diag(S)·Uh, as B = V_r·diag(√(S_r/s)) and A = diag(√(S_r/s))·Uh_r.
  "pissa_niter_N" uses torch.svd_lowrank with N subspace iterations (fast, randomised).
- OLoRA (Büyükakyüz 2024, arXiv:2406.01775): the QR decomposition W = QR,
  B = Q[:, :r], A = R[:r].
Every function takes W in the (out, in) layout of a Linear weight, in float32, and
follows PEFT 0.21.2's operations, so results agree with PEFT's up to the sign of each
rank component (an SVD is unique only up to that).
"""

from __future__ import annotations

import torch


def pissa_factors(weight: torch.Tensor, rank: int, scale: float, niter: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), shapes (rank, in) and (out, rank), with s·B·A the best rank-r part of `weight`."""
    if niter is None:
        V, S, Uh = torch.linalg.svd(weight, full_matrices=False)  # weight = V diag(S) Uh
        Vr, Sr, Uhr = V[:, :rank], S[:rank] / scale, Uh[:rank]
    else:
        Vr, Sr, Ur = torch.svd_lowrank(weight, rank, niter=niter)  # draws from torch's generator
        Sr, Uhr = Sr / scale, Ur.t()
    A = torch.diag(torch.sqrt(Sr)) @ Uhr  # (k, in)
    B = Vr @ torch.diag(torch.sqrt(Sr))  # (out, k)
    return _pad(A, B, rank)


def olora_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) = (R[:r], Q[:, :r]) of weight = Q R. Not divided by the scale: PEFT's OLoRA keeps
    s·B·A as the part removed from the base, whatever s is."""
    Q, R = torch.linalg.qr(weight)
    return _pad(R[:rank].contiguous(), Q[:, :rank].contiguous(), rank)


def base_init_factors(init: str, weight: torch.Tensor, rank: int, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on an init_lora_weights value for which config.is_base_init is true:
    "pissa", "pissa_niter_N" or "olora"."""
    if init == "olora":
        return olora_factors(weight, rank)
    return pissa_factors(weight, rank, scale, int(init.split("_niter_")[1]) if "_niter_" in init else None)


def residual(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W_res = W - s·B·A: what the base keeps so that its outputs do not change at init."""
    return weight - scale * B @ A  # (out, in)


def _pad(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank above min(out, in) has nothing left to take: its extra components are zero."""
    if A.shape[0] == rank:
        return A, B
    padded_A, padded_B = A.new_zeros(rank, A.shape[1]), B.new_zeros(B.shape[0], rank)
    padded_A[: A.shape[0]], padded_B[:, : B.shape[1]] = A, B
    return padded_A, padded_B
