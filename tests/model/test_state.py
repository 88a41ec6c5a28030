"""model/state.py: the one owner of which tensors an adapter has at each module. Save, load
(check_load), verify and inspect all ask it, so an adapter always reloads from its own save.

The case they once disagreed on: bias="all" (or "lora_only") where a module's `bias` is a
buffer, not a parameter. PEFT writes a persistent buffer (it is in the state dict) and never
a non-persistent one; adapterkit follows, and trains neither (a buffer takes no gradient)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel as PeftPeftModel
from peft import get_peft_model as peft_get_peft_model
from safetensors.torch import load_file

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.ops.inspect import inspect_adapter
from adapterkit.ops.verify import verify_adapter
from helpers import logits, max_diff, randomize_adapter, tiny_llama

HEAD_BIAS = "base_model.model.lm_head.bias"


def buffer_bias_llama(persistent: bool) -> torch.nn.Module:
    """The tiny Llama whose lm_head adds a bias held as a buffer (nn.Linear reads self.bias either way)."""
    model = tiny_llama()
    head = model.lm_head
    del head.bias  # bias=False registered a None parameter under that name
    head.register_buffer("bias", torch.randn(64, generator=torch.Generator().manual_seed(5)) * 0.1,
                         persistent=persistent)
    return model


# (bias, targets, the on-disk key of lm_head's bias when it is part of the adapter)
CASES = {
    "all, head not targeted": ("all", ["q_proj"], HEAD_BIAS),
    "lora_only, head targeted": ("lora_only", ["q_proj", "lm_head"], "base_model.model.lm_head.base_layer.bias"),
}


@pytest.mark.parametrize("case, persistent", [
    ("all, head not targeted", True), ("all, head not targeted", False), ("lora_only, head targeted", True),
])
def test_an_adapter_with_a_buffer_bias_reloads_from_its_own_save(case, persistent, tmp_path):
    bias, targets, head_key = CASES[case]
    config = dict(r=2, lora_alpha=4, target_modules=targets, bias=bias)
    ours = get_peft_model(buffer_bias_llama(persistent), LoraConfig(init_lora_weights=False, **config))
    assert not ours.model.lm_head.bias.requires_grad  # a buffer is not trained
    randomize_adapter(ours, seed=2)
    with torch.no_grad():
        ours.model.lm_head.bias.add_(0.5)  # the buffer moved: saved only when PEFT would save it
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert (head_key in saved) == persistent

    assert verify_adapter(tmp_path / "ours", buffer_bias_llama(persistent)).problems == []
    assert inspect_adapter(tmp_path / "ours").parameters == sum(t.numel() for t in saved.values())
    reloaded = AdapterModel.from_pretrained(buffer_bias_llama(persistent), tmp_path / "ours")
    # A non-persistent buffer is the base's own: the reload keeps the base's value, 0.5 below ours.
    moved = 0.0 if persistent else 0.5
    assert max_diff(logits(reloaded) + moved, logits(ours)) <= 1e-5

    # PEFT writes the same keys, and reads ours.
    peft = peft_get_peft_model(buffer_bias_llama(persistent), PeftLoraConfig(init_lora_weights=False, **config))
    peft.save_pretrained(tmp_path / "peft", save_embedding_layers=False)
    assert sorted(load_file(tmp_path / "peft" / "adapter_model.safetensors")) == sorted(saved)
    theirs = PeftPeftModel.from_pretrained(buffer_bias_llama(persistent), tmp_path / "ours")
    assert max_diff(logits(theirs), logits(reloaded)) <= 1e-5


def test_a_bias_all_adapter_saved_beside_other_adapters_reloads_onto_a_fresh_base(tmp_path):
    """Another adapter wraps `value` (LoRA) and `classifier` (modules_to_save): the bias="all" adapter's
    tensors are still named from the base's own paths, so its folder fits a fresh base. PEFT's
    spelling from such a model, `value.base_layer.bias`, is read as `value.bias`."""
    from safetensors.torch import save_file

    from helpers import tiny_bert

    model = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["value"], modules_to_save=["classifier"]),
                           adapter_name="other")
    model.add_adapter("default", LoraConfig(r=2, lora_alpha=4, target_modules=["query"], bias="all",
                                            init_lora_weights=False))
    model.set_adapter("default")
    randomize_adapter(model, seed=4)  # the active adapter's factors, and every bias it trains
    expected = logits(model)
    model.save_pretrained(tmp_path / "saved", selected_adapters=["default"])
    weights = tmp_path / "saved" / "adapter_model.safetensors"
    saved = load_file(weights)
    value_bias = "base_model.model.bert.encoder.layer.0.attention.self.value.bias"
    assert value_bias in saved and "base_model.model.classifier.bias" in saved
    fresh = AdapterModel.from_pretrained(tiny_bert(), tmp_path / "saved")
    assert max_diff(logits(fresh), expected) <= 1e-6
    assert max_diff(logits(PeftPeftModel.from_pretrained(tiny_bert(), tmp_path / "saved")), expected) <= 1e-5

    saved[value_bias.replace(".bias", ".base_layer.bias")] = saved.pop(value_bias)
    save_file(saved, weights, metadata={"format": "pt"})
    assert max_diff(logits(AdapterModel.from_pretrained(tiny_bert(), tmp_path / "saved")), expected) <= 1e-6
