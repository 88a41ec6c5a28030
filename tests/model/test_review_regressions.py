"""Regressions found in review: device/dtype moves of emptied packs, reloads keeping the active set,
mixed batches under disable_adapters, failed safe merges leaving ties alone."""

from __future__ import annotations

import pytest
import torch

from adapterkit import LoraConfig, NaNInMergeError, get_peft_model
from helpers import input_ids, max_diff, randomize_adapter, tiny_llama


def _packs(model):
    return [pack for lora in model._loras().values() for pack in lora.packs.values()]


def test_adapter_added_after_half_into_an_emptied_rank_takes_the_new_dtype():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("r8", LoraConfig(r=8, target_modules=["q_proj"]))
    model.delete_adapter("r8")  # q_proj keeps its rank-4 adapter; its rank-8 pack is now empty
    model.to(torch.float64)
    model.add_adapter("again", LoraConfig(r=8, target_modules=["q_proj"]))
    for lora in model._loras().values():
        assert lora.lora_A["again"].dtype == torch.float64
        assert lora.lora_B["again"].dtype == torch.float64
    assert all(pack.dtype == torch.float64 for pack in _packs(model))


def test_reloading_one_of_several_active_adapters_keeps_them_all_active(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("b", LoraConfig(r=4, target_modules=["v_proj"]))
    randomize_adapter(model)
    model.save_pretrained(tmp_path / "out")
    model.set_adapter(["default", "b"])
    model.load_adapter(tmp_path / "out", adapter_name="default", overwrite=True)
    assert list(model.active_adapters) == ["default", "b"]


def test_mixed_batch_under_disable_adapters_uses_the_named_adapters_like_a_uniform_batch():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model)
    model.eval()
    ids = input_ids(batch=2)
    with torch.no_grad():
        expected = torch.cat([model(input_ids=ids[i:i + 1], adapter_names=[n]).logits
                              for i, n in enumerate(["default", "b"])])
        model.disable_adapters()
        mixed = model(input_ids=ids, adapter_names=["default", "b"]).logits
    assert model.routing.disabled  # restored after the call
    assert max_diff(mixed, expected) < 1e-5


def test_failed_safe_merge_leaves_a_tied_head_tied():
    model = get_peft_model(tiny_llama(tie_word_embeddings=True), LoraConfig(r=4, target_modules=["lm_head"]))
    randomize_adapter(model)
    for lora in model._loras().values():
        with torch.no_grad():
            lora.lora_B["default"].fill_(float("nan"))
    base = model.get_base_model()
    with pytest.raises(NaNInMergeError):
        model.merge_adapter(safe_merge=True, untie_weights=True)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    assert base.config.tie_word_embeddings
