"""Merged exports of heads: an adapted tied head is written untied, a modules_to_save head under the base keys."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from adapterkit import LoraConfig, get_peft_model
from adapterkit.ops.merge import export_merged
from helpers import randomize_adapter, tiny_llama


def test_export_of_an_adapted_tied_head_is_written_untied(tmp_path):
    model = get_peft_model(tiny_llama(tie_word_embeddings=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"]))
    randomize_adapter(model)
    out = export_merged(model, tmp_path / "merged")
    # The file holds a merged lm_head that differs from the embedding: a config that still says
    # "tied" makes loaders that honour it (vLLM, older transformers) drop the merged head.
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert model.get_base_model().config.tie_word_embeddings  # the live model is untouched


def test_export_of_a_modules_to_save_head_uses_the_base_keys(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    randomize_adapter(model)
    head = model.get_base_model().lm_head
    with torch.no_grad():
        head.modules_to_save["default"].weight.add_(1.0)
    out = export_merged(model, tmp_path / "merged")
    state = load_file(out / "model.safetensors")
    assert not [k for k in state if "original_module" in k or "modules_to_save" in k]
    assert torch.equal(state["lm_head.weight"], head.modules_to_save["default"].weight.detach())
