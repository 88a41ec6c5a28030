"""Moves and casts keep adapters with the model; adapters take their layer's dtype."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.core.injection import lora_modules
from helpers import TARGETS, input_ids, logits, max_diff, randomize_adapter, tiny_gpt2, tiny_llama


def adapted(factory=tiny_llama, targets=TARGETS["llama"]):
    model = get_peft_model(factory(), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=2, target_modules=targets))
    randomize_adapter(model, seed=41)
    return model


def assert_views_of_packs(model) -> None:
    loras = lora_modules(model.get_base_model())
    assert loras
    for lora in loras.values():
        for pack in lora.packs.values():
            for name, slot in pack.used.items():
                assert lora.lora_A[name].data_ptr() == pack.A[slot].data_ptr()
                assert lora.lora_B[name].data_ptr() == pack.B[slot].data_ptr()
                assert lora.lora_A[name].dtype == pack.A.dtype == lora.base.weight.dtype


def test_to_float64_keeps_adapters_and_outputs():
    model = adapted()
    expected = {name: None for name in ("default", "second")}
    for name in expected:
        model.set_adapter(name)
        expected[name] = logits(model)
    model.to(torch.float64)
    assert_views_of_packs(model)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    for name in expected:
        model.set_adapter(name)
        out = logits(model)
        assert out.dtype == torch.float64
        assert max_diff(out, expected[name]) < 1e-5


def test_training_step_after_double_reaches_the_forward():
    model = adapted(tiny_gpt2, TARGETS["gpt2"]).double()
    assert_views_of_packs(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float64 for p in trainable)
    ids = input_ids()
    before = logits(model, ids)
    model.train()
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    after = logits(model, ids)
    assert max_diff(after, before) > 1e-4
    assert_views_of_packs(model)
    # Mixed batches read the packs, not the parameters: they must see the step too.
    mixed = model(input_ids=ids, adapter_names=["default"] * ids.shape[0]).logits
    assert max_diff(mixed, after) < 1e-8
    # The forward really uses the updated parameters: a hand merge agrees.
    plain = model.merge_and_unload()
    assert max_diff(logits(plain, ids), after) < 1e-8


def test_adapters_take_the_dtype_of_their_layer():
    base = tiny_llama().to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False))
    for name, param in model.named_parameters():
        if ".lora." in name:
            assert param.dtype == torch.bfloat16, name
    assert logits(model).dtype == torch.bfloat16


def test_adapter_on_a_layer_of_another_dtype():
    base = tiny_llama()
    base.model.layers[1].self_attn.q_proj.to(torch.float64)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    dtypes = {path: lora.lora_A["default"].dtype for path, lora in lora_modules(base).items()}
    assert dtypes == {"model.layers.0.self_attn.q_proj": torch.float32,
                      "model.layers.1.self_attn.q_proj": torch.float64}


def test_loaded_adapter_is_cast_to_the_layer_dtype(tmp_path):
    model = adapted()
    model.save_pretrained(tmp_path / "a")
    half = AdapterModel.from_pretrained(tiny_llama().to(torch.bfloat16), tmp_path / "a")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert max_diff(logits(half).float(), logits(model)) < 0.1


def test_base_loaded_with_a_cpu_device_map(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    device_map = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map=device_map).eval()
    assert max_diff(logits(base), logits(tiny_llama())) == 0.0
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    reference = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for key, tensor in reference.adapter_state_dict().items():
            tensor.copy_(model.adapter_state_dict()[key])
    assert max_diff(logits(model), logits(reference)) < 1e-6
    assert all(p.device.type == "cpu" for p in model.parameters())
