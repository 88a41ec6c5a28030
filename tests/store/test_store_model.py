"""Put from a model, get straight into a model, and the base the adapter is bound to."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from adapterkit import BaseModelMismatchError, LoraConfig, get_peft_model
from adapterkit.store import BaseMismatchWarning


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.v_proj, self.out = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, x):
        return self.out(self.q_proj(x) + self.v_proj(x))


def _base(seed: int) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _trained(seed: int, base_seed: int = 0, name: str = "default"):
    model = get_peft_model(_base(base_seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                           adapter_name=name)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.normal_()  # lora_B starts at zero; give the adapter a real effect
    return model


def test_put_model_records_the_base_and_its_size(store):
    model = _trained(1)
    record = store.put(model, "from-model")
    assert record.base.fingerprint == model.base_fingerprint.digest
    assert record.base.architecture == "Tiny"
    assert record.summary.parameter_count == 2 * (4 * 12 + 12 * 4)
    usage = store.du()
    base_bytes = sum(p.numel() * 4 for p in Tiny().parameters())
    assert usage.full_copy_bytes == base_bytes and usage.versions_with_known_base == 1


def test_get_into_a_model_reproduces_the_outputs(store):
    trained = _trained(2, name="helper")
    store.put(trained, "helper", adapter_name="helper")
    x = torch.randn(3, 12)
    trained.set_adapter("helper")
    expected = trained(x)

    fresh = get_peft_model(_base(0), LoraConfig(r=1, target_modules=["q_proj"]), adapter_name="scratch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same base: no warning at all
        record = store.load_into(fresh, "helper@latest")
    fresh.set_adapter(record.name)
    torch.testing.assert_close(fresh(x), expected)


def test_loading_onto_another_base_warns_naming_both(store):
    store.put(_trained(3, base_seed=0), "bound")
    other = get_peft_model(_base(1), LoraConfig(r=1, target_modules=["q_proj"]), adapter_name="scratch")
    with pytest.warns(BaseMismatchWarning) as caught:
        store.load_into(other, "bound", adapter_name="bound")
    assert len(caught) == 1
    text = str(caught[0].message)
    recorded = store.resolve("bound").base.fingerprint
    assert "bound@1" in text and recorded in text and other.base_fingerprint.digest in text
    assert "bound" in other.peft_config


def test_strict_base_refuses_and_leaves_the_model_untouched(store):
    store.put(_trained(4, base_seed=0), "strict")
    other = get_peft_model(_base(1), LoraConfig(r=1, target_modules=["q_proj"]), adapter_name="scratch")
    with pytest.raises(BaseModelMismatchError, match="strict@1 was trained on"):
        store.load_into(other, "strict", strict_base=True)
    assert list(other.peft_config) == ["scratch"]


def test_adapters_filter_by_the_base_they_were_trained_on(store):
    store.put(_trained(5, base_seed=0), "on-a")
    store.put(_trained(6, base_seed=1), "on-b")
    digest = _trained(0, base_seed=1).base_fingerprint.digest
    assert [r.ref for r in store.ls(base=digest)] == ["on-b@1"]
