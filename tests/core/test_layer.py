"""LoraAdapters: the LoRA math on Linear, GPT-2 Conv1D and Embedding, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adapterkit import LoraConfig, get_peft_model
from adapterkit.core.injection import attach, detach
from adapterkit.core.layer import AdapterRouting, LoraAdapters, lora_scale
from helpers import input_ids, logits, max_diff, tiny_gpt2, tiny_llama


def _routing(*active: str) -> AdapterRouting:
    return AdapterRouting(active=tuple(active))


def _randomize(lora: LoraAdapters, name: str, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (lora.lora_A[name], lora.lora_B[name]):
            param.copy_(torch.randn(param.shape, generator=generator))


def test_linear_adds_scaled_b_a_x():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    lora = attach(layer, "linear", _routing("a"))
    lora.add("a", rank=3, alpha=6, dropout=0.0, use_rslora=False)
    _randomize(lora, "a")
    x = torch.randn(2, 4, 6)
    A, B = lora.lora_A["a"].detach(), lora.lora_B["a"].detach()
    expected = x @ layer.weight.T + layer.bias + (6 / 3) * (x @ A.T @ B.T)
    assert A.shape == (3, 6) and B.shape == (5, 3)
    assert max_diff(layer(x), expected) < 1e-5


def test_conv1d_needs_no_fan_in_fan_out_flag():
    model = tiny_gpt2()
    conv = model.transformer.h[0].attn.c_attn  # weight (in=16, out=48)
    lora = attach(conv, "conv1d", _routing("a"))
    lora.add("a", rank=2, alpha=4, dropout=0.0, use_rslora=False)
    _randomize(lora, "a")
    A, B = lora.lora_A["a"].detach(), lora.lora_B["a"].detach()
    assert A.shape == (2, 16) and B.shape == (48, 2)  # PEFT's shapes for Conv1D
    x = torch.randn(3, 16)
    expected = x @ conv.weight + conv.bias + 2.0 * (x @ A.T @ B.T)
    assert max_diff(conv(x), expected) < 1e-5
    assert lora.delta_weight("a").shape == conv.weight.shape


def test_embedding_looks_up_a_then_multiplies_b():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    lora = attach(emb, "embedding", _routing("a"))
    lora.add("a", rank=2, alpha=2, dropout=0.0, use_rslora=False)
    _randomize(lora, "a")
    A, B = lora.lora_A["a"].detach(), lora.lora_B["a"].detach()
    assert A.shape == (2, 10) and B.shape == (4, 2)
    ids = torch.tensor([[1, 2, 9], [0, 0, 3]])
    expected = emb.weight[ids] + 1.0 * (A.T[ids] @ B.T)
    assert max_diff(emb(ids), expected) < 1e-6


def test_scales():
    assert lora_scale(16, 4, use_rslora=False) == 4.0
    assert lora_scale(16, 4, use_rslora=True) == 8.0
    assert math.isclose(lora_scale(8, 3, use_rslora=True), 8 / math.sqrt(3))


def test_rslora_scales_the_delta_by_alpha_over_sqrt_r():
    def delta(rslora: bool) -> torch.Tensor:
        torch.manual_seed(0)
        layer = nn.Linear(4, 4)
        lora = attach(layer, "linear", _routing("a"))
        lora.add("a", rank=4, alpha=8, dropout=0.0, use_rslora=rslora)
        _randomize(lora, "a")
        return lora.delta_weight("a")

    assert torch.allclose(delta(True), delta(False) * 2)  # (8/2) / (8/4)


def test_inactive_or_disabled_adapters_do_nothing():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    routing = _routing("a")
    lora = attach(layer, "linear", routing)
    lora.add("a", 2, 2, 0.0, False)
    _randomize(lora, "a")
    x = torch.randn(3, 4)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    assert max_diff(layer(x), plain) > 1e-3
    routing.disabled = True
    assert torch.equal(layer(x), plain)
    routing.disabled, routing.active = False, ()
    assert torch.equal(layer(x), plain)


def test_two_active_adapters_add_up():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    routing = _routing("a", "b")
    lora = attach(layer, "linear", routing)
    lora.add("a", 2, 2, 0.0, False)
    lora.add("b", 3, 3, 0.0, False)
    _randomize(lora, "a", 1)
    _randomize(lora, "b", 2)
    x = torch.randn(3, 4)
    expected = nn.functional.linear(x, layer.weight, layer.bias) + x @ lora.delta_weight("a").T + x @ lora.delta_weight("b").T
    assert max_diff(layer(x), expected) < 1e-5


def test_merge_and_unmerge_at_the_layer_are_idempotent():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    lora = attach(layer, "linear", _routing("a"))
    lora.add("a", 2, 2, 0.0, False)
    _randomize(lora, "a")
    x = torch.randn(3, 4)
    before_weight, before_out = layer.weight.detach().clone(), layer(x).detach()
    assert lora.merge(["a"]) == ["a"]
    assert lora.merge(["a"]) == []  # already merged: nothing to do
    assert max_diff(layer(x), before_out) < 1e-5  # merged adapter no longer added on top
    lora.unmerge()
    lora.unmerge()
    assert max_diff(layer.weight, before_weight) < 1e-6
    assert max_diff(layer(x), before_out) < 1e-6


def test_detach_leaves_the_plain_module():
    layer = nn.Linear(4, 4)
    keys = list(layer.state_dict())
    attach(layer, "linear", _routing("a")).add("a", 2, 2, 0.0, False)
    assert len(layer._forward_hooks) == 1
    detach(layer)
    assert not layer._forward_hooks and not hasattr(layer, "lora") and list(layer.state_dict()) == keys


def test_attach_refuses_a_module_with_a_lora_attribute():
    layer = nn.Linear(4, 4)
    layer.lora = nn.Identity()
    with pytest.raises(ValueError, match="lora"):
        attach(layer, "linear", _routing())


def test_parameters_are_views_of_the_rank_pack():
    layer = nn.Linear(4, 4)
    lora = attach(layer, "linear", _routing("a"))
    for i in range(12):  # enough adds to make the pack grow and re-point its views
        lora.add(f"a{i}", 2, 2, 0.0, False)
    pack = lora.packs[2]
    for name, slot in pack.used.items():
        assert lora.lora_A[name].data_ptr() == pack.A[slot].data_ptr()
        assert lora.lora_B[name].data_ptr() == pack.B[slot].data_ptr()
    lora.remove("a3")
    assert "a3" not in lora.lora_A and "a3" not in pack.used


# --- through the model: options -------------------------------------------------


def test_default_init_changes_nothing_and_false_changes_outputs():
    base = logits(tiny_llama())
    noop = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert torch.equal(logits(noop), base)
    random_b = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    assert max_diff(logits(random_b), base) > 1e-4
    gaussian = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="gaussian"))
    assert torch.equal(logits(gaussian), base)


def test_embedding_default_init_is_a_no_op():
    base = logits(tiny_gpt2())
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["wte"]))
    assert torch.equal(logits(model), base)


def test_dropout_only_in_training():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    lora_dropout=0.5, init_lora_weights=False))
    ids = input_ids()
    model.eval()
    assert torch.equal(logits(model, ids), logits(model, ids))
    model.train()
    torch.manual_seed(1)
    first = logits(model, ids)
    torch.manual_seed(2)
    assert max_diff(first, logits(model, ids)) > 1e-6


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_base_frozen_adapter_trainable_and_only_adapter_gets_gradients():
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    trainable = _trainable(model)
    assert trainable and all(".lora.lora_" in n for n in trainable)
    model.train()
    out = model(input_ids=input_ids(), labels=input_ids())
    out.loss.backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert name.endswith("lora_A.default") or param.grad is not None, name
        else:
            assert param.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("bias, expected", [
    ("none", set()),
    ("lora_only", {"transformer.h.0.attn.c_attn.bias", "transformer.h.1.attn.c_attn.bias"}),
])
def test_bias_options(bias, expected):
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], bias=bias))
    biases = {n for n in _trainable(model) if n.endswith(".bias")}
    assert {n.replace("model.", "", 1) for n in biases} == expected


def test_bias_all_trains_every_bias():
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], bias="all"))
    every_bias = {n for n, _ in tiny_gpt2().named_parameters() if n.endswith(".bias")}
    trained = {n.replace("model.", "", 1) for n in _trainable(model) if n.endswith(".bias")}
    assert trained == every_bias


def test_rank_and_alpha_patterns_set_shapes_and_scales():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 2}))
    q = model.model.model.layers[0].self_attn.q_proj.lora
    v = model.model.model.layers[0].self_attn.v_proj.lora
    assert q.lora_A["default"].shape[0] == 4 and v.lora_A["default"].shape[0] == 2
    assert q.info["default"].scale == 0.5 and v.info["default"].scale == 4.0


def test_modules_to_save_trains_a_copy_and_leaves_the_original():
    from helpers import tiny_bert

    model = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]))
    head = model.model.classifier
    assert type(head).__name__ == "ModulesToSave"
    trainable = _trainable(model)
    assert "model.classifier.modules_to_save.default.weight" in trainable
    assert "model.classifier.original_module.weight" not in trainable
    with torch.no_grad():
        head.modules_to_save["default"].weight.add_(1.0)
    changed = logits(model)
    with model.disable_adapter():
        assert torch.equal(logits(model), logits(tiny_bert()))
    assert max_diff(changed, logits(tiny_bert())) > 1e-3
