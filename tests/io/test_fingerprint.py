"""Base fingerprints: one per base whatever dtype it is loaded in; another base, another fingerprint."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from adapterkit import AdapterModel, BaseModelMismatchError, LoraConfig, get_peft_model
from adapterkit.io.fingerprint import base_fingerprint
from helpers import FACTORIES, randomize_adapter, tiny_llama

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _in(model, dtype):
    return copy.deepcopy(model).to(dtype)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
@pytest.mark.parametrize("seed", range(4))
def test_same_base_in_float32_bfloat16_float16_has_one_fingerprint(arch, seed):
    trained_in_fp32 = FACTORIES[arch](seed)
    digests = {base_fingerprint(_in(trained_in_fp32, dtype)).digest for dtype in DTYPES}
    assert len(digests) == 1
    # A base published in bfloat16 (most are), loaded in each dtype: the same one again.
    published = _in(trained_in_fp32, torch.bfloat16)
    assert {base_fingerprint(_in(published, dtype)).digest for dtype in DTYPES} == digests


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_other_bases_have_other_fingerprints(arch):
    base = FACTORIES[arch](0)
    others = [FACTORIES[arch](seed) for seed in range(1, 4)]
    # A fine-tuned variant: every weight moved by 2% of its tensor's spread, as a chat tune might.
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02 * param.std().nan_to_num(0.0))
    digests = [base_fingerprint(m).digest for m in [base, tuned, *others]]
    assert len(set(digests)) == len(digests)


def test_adapter_trained_in_float32_loads_silently_on_the_same_base_in_float16_and_refuses_another(tmp_path):
    trained = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(trained)
    folder = trained.save_pretrained(tmp_path / "adapter")
    for dtype in DTYPES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a base-mismatch warning would fail here
            AdapterModel(tiny_llama().to(dtype)).load_adapter(folder, strict_base=True)
    with pytest.raises(BaseModelMismatchError):
        AdapterModel(tiny_llama(seed=5).to(torch.float16)).load_adapter(folder, strict_base=True)


def test_fingerprints_recorded_before_signs_were_hashed_still_match(tmp_path):
    model = tiny_llama()
    here = base_fingerprint(model)
    old_style = type(here)(here.architecture, here.shapes_sha256, "", here.name)
    recorded = type(here).from_metadata({**old_style.to_metadata(), "adapterkit.base.fingerprint": here.legacy_digest})
    assert here.matches(recorded) and recorded.digest != here.digest
    assert not base_fingerprint(tiny_llama(seed=1)).matches(recorded)
