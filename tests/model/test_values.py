"""model.values: exactly the tensors holding NaN or inf are named, whatever the chunking, dtypes
or sums that overflow; non-floating dtypes and non-finite scales are reported."""

from __future__ import annotations

import pytest
import torch

import adapterkit.model.values as values
from adapterkit import LoraConfig

TENSORS = {
    "zeros": torch.zeros(3), "bf16": torch.ones(8, dtype=torch.bfloat16), "empty": torch.zeros(0),
    "nan16": torch.tensor([1.0, float("nan")], dtype=torch.float16), "inf0d": torch.tensor(float("inf")),
    "fp8_neg_inf": torch.tensor([float("-inf")]).to(torch.float8_e5m2), "big_but_finite": torch.full((4,), 3e38),
    "inf_minus_inf": torch.tensor([float("inf"), float("-inf")]), "f64": torch.full((5,), 1e300, dtype=torch.float64),
}
NONFINITE = ["nan16", "inf0d", "fp8_neg_inf", "inf_minus_inf"]


@pytest.mark.parametrize("chunk", [1, 3, 10, 1 << 24])
def test_exactly_the_nonfinite_tensors_are_named(monkeypatch, chunk):
    monkeypatch.setattr(values, "_CHUNK_ELEMENTS", chunk)
    assert values.nonfinite_keys(TENSORS) == NONFINITE
    assert values.nonfinite_keys({}) == []


def test_check_values_reports_dtypes_tensors_and_scales():
    config = LoraConfig(r=2, lora_alpha=float("inf"), alpha_pattern={"q": float("nan"), "v": 2.0},
                        target_modules=["q"])
    tensors = dict(TENSORS, ints=torch.zeros(2, dtype=torch.int8), flags=torch.zeros(2, dtype=torch.bool),
                   complex=torch.zeros(2, dtype=torch.complex64))
    check = values.check_values(config, tensors)
    assert [k for k, _ in check.wrong_dtype] == ["ints", "flags", "complex"]
    assert check.nonfinite == NONFINITE
    assert check.nonfinite_scales == ["lora_alpha=inf", "alpha_pattern['q']=nan"]
    opted_out = values.check_values(config, tensors, allow_nonfinite=True)
    assert not opted_out.nonfinite and not opted_out.nonfinite_scales and len(opted_out.wrong_dtype) == 3
