"""core/variants.py is the one extension point for a LoRA variant: a new variant is a subclass and
an entry in VARIANTS, and the layer stores, runs (alone and in mixed batches), merges and unmerges
it without a change. Checked with a toy variant against an independent oracle: a learned gain g per
output feature on the LoRA output, y = W x + g ⊙ (s·B·A·x), is plain LoRA with B' = diag(g)·B."""

from __future__ import annotations

import pytest
import torch

from adapterkit import LoraConfig, get_peft_model
from adapterkit.core import variants
from adapterkit.core.variants import LoraVariant, VariantTensor, variant_of
from helpers import input_ids, logits, max_diff, tiny_llama

GATE_ATTR = "lora_toy_gate"


class GateVariant(LoraVariant):
    name = "gate"
    flag = "use_gate"
    tensors = (VariantTensor("G", GATE_ATTR, GATE_ATTR),)
    corrects_output = True

    def tensor_shapes(self, in_features, out_features, rank):
        return {"G": (out_features,)}

    @torch.no_grad()
    def reset(self, layer, name):
        layer.extra(GATE_ATTR)[name].fill_(1.0)

    def correction(self, layer, name, x, lora_out, base_out):
        return (layer.extra(GATE_ATTR)[name] - 1) * lora_out

    def merge(self, layer, name, dense, delta):
        return dense + layer.extra(GATE_ATTR)[name].detach().view(-1, 1) * delta, None

    def unmerge(self, layer, name, merged, delta, state):
        return merged - layer.extra(GATE_ATTR)[name].detach().view(-1, 1) * delta


class GateConfig(LoraConfig):
    use_gate = True  # a class attribute: not a config field, so the field checks never see it


TARGETS = ["q_proj", "down_proj", "embed_tokens"]


def test_a_new_variant_runs_mixes_merges_and_unmerges_with_no_layer_change(monkeypatch):
    monkeypatch.setattr(variants, "VARIANTS", (*variants.VARIANTS, GateVariant()))
    config = GateConfig(r=2, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False)
    assert variant_of(config).name == "gate" and variant_of(LoraConfig()).name == "lora"
    model = get_peft_model(tiny_llama(), config).eval()
    oracle = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS,
                                                     init_lora_weights=False))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for path, lora in model._loras().items():
            tensors = lora.tensors_of("default")
            assert set(tensors) == {"A", "B", "G"} and tensors["G"].requires_grad
            assert torch.equal(tensors["G"], torch.ones_like(tensors["G"]))  # reset ran
            tensors["G"].copy_(1 + torch.randn(tensors["G"].shape, generator=generator))
            theirs = oracle._loras()[path]
            theirs.lora_A["default"].copy_(tensors["A"])
            theirs.lora_B["default"].copy_(tensors["G"].view(-1, 1) * tensors["B"])  # B' = diag(g)·B
    expected = logits(oracle)
    assert max_diff(logits(model), expected) <= 1e-5
    assert max_diff(expected, logits(tiny_llama())) > 1e-2

    rows = ["default", "__base__", "default"]
    ids = input_ids(batch=3, length=5)
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=rows).logits
    assert max_diff(mixed[[0, 2]], logits(oracle, ids[[0, 2]])) <= 1e-5
    assert max_diff(mixed[1:2], logits(tiny_llama(), ids[1:2])) <= 1e-5

    base = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if ".lora." not in n}
    model.merge_adapter()
    assert max_diff(logits(model), expected) <= 1e-5
    model.unmerge_adapter()
    for name, param in model.get_base_model().named_parameters():
        if name in base:
            assert max_diff(param, base[name]) <= 1e-6, name


@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_a_variant_refuses_kinds_it_does_not_support_before_anything_changes(kind, monkeypatch):
    from adapterkit.errors import UnsupportedAdapterError

    class LinearOnly(GateVariant):
        def supports(self, module_kind):
            return module_kind.name == "linear"

    monkeypatch.setattr(variants, "VARIANTS", (*variants.VARIANTS, LinearOnly()))
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    before = {n for n, _ in model.named_parameters()}
    config = GateConfig(r=2, target_modules=["q_proj"] if kind == "linear" else ["embed_tokens", "q_proj"])
    if kind == "linear":
        model.add_adapter("g", config)
        assert "g" in model.peft_config
        return
    with pytest.raises(UnsupportedAdapterError, match=r"use_gate=True targets \['embedding'\]"):
        model.add_adapter("g", config)
    assert {n for n, _ in model.named_parameters()} == before and "g" not in model.peft_config
