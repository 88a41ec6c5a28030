"""Many named adapters side by side: add, load, switch, combine, delete, disable."""

from __future__ import annotations

import pytest
import torch

from adapterkit import (
    BASE_ROW,
    AdapterExistsError,
    AdapterModel,
    LoraConfig,
    PeftModel,
    UnknownAdapterError,
    get_peft_model,
)
from adapterkit.core.injection import lora_modules
from helpers import input_ids, logits, max_diff, tiny_llama

BASE = None


def base_logits():
    global BASE
    if BASE is None:
        BASE = logits(tiny_llama())
    return BASE


def make_model():
    """'a' on q_proj, 'b' on q_proj+v_proj (another rank), 'c' on down_proj; all non-trivial."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("c", LoraConfig(r=2, lora_alpha=2, target_modules=["down_proj"]))
    for i, name in enumerate("abc"):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for lora in lora_modules(model.model).values():
                if lora.has(name):
                    for p in (lora.lora_A[name], lora.lora_B[name]):
                        p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def single(name: str):
    """The same adapter alone on a fresh base, for comparison."""
    model = make_model()
    for other in "abc":
        if other != name:
            model.delete_adapter(other)
    return logits(model)


@pytest.fixture(scope="module")
def alone():
    return {name: single(name) for name in "abc"}


def test_peft_model_is_adapter_model():
    assert PeftModel is AdapterModel


def test_first_adapter_is_active_and_others_wait(alone):
    model = make_model()
    assert model.active_adapters == ["a"]
    assert model.active_adapters() == ["a"]  # PEFT exposes it both ways
    assert model.active_adapter == "a"
    assert sorted(model.peft_config) == ["a", "b", "c"]
    assert max_diff(logits(model), alone["a"]) < 1e-6


def test_set_adapter_by_name_switches_outputs(alone):
    model = make_model()
    for name in "bca":
        model.set_adapter(name)
        assert model.active_adapters() == [name]
        assert max_diff(logits(model), alone[name]) < 1e-6
    assert max_diff(alone["a"], alone["b"]) > 1e-3


def test_set_adapter_list_combines_adapters(alone):
    model = make_model()
    model.set_adapter(["a", "c"])
    assert model.active_adapters == ["a", "c"]
    assert model.active_adapter == ["a", "c"]
    combined = logits(model)
    assert max_diff(combined, alone["a"]) > 1e-4 and max_diff(combined, alone["c"]) > 1e-4
    # Deltas add up at each layer: with both on different modules, compare to a hand-made model.
    both = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]), adapter_name="a")
    both.add_adapter("c", LoraConfig(r=2, lora_alpha=2, target_modules=["down_proj"]))
    with torch.no_grad():
        for path, lora in lora_modules(both.model).items():
            src = model.model.get_submodule(path).lora
            for name in ("a", "c"):
                if lora.has(name):
                    lora.lora_A[name].copy_(src.lora_A[name])
                    lora.lora_B[name].copy_(src.lora_B[name])
    both.set_adapter(["c", "a"])
    assert max_diff(logits(both), combined) < 1e-5


def test_set_unknown_adapter_names_the_loaded_ones():
    model = make_model()
    with pytest.raises(UnknownAdapterError) as info:
        model.set_adapter("zzz")
    assert "zzz" in str(info.value) and "'a'" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert model.active_adapters == ["a"]


def test_adding_an_existing_name_is_refused():
    model = make_model()
    with pytest.raises(AdapterExistsError, match="'b'"):
        model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj"]))


@pytest.mark.parametrize("bad", ["", "a.b", "x/y", "__base__"])
def test_unusable_adapter_names(bad):
    model = make_model()
    with pytest.raises(ValueError):
        model.add_adapter(bad, LoraConfig(r=2, target_modules=["q_proj"]))


def test_delete_inactive_adapter(alone):
    model = make_model()
    model.delete_adapter("b")
    assert sorted(model.peft_config) == ["a", "c"]
    assert not any(lora.has("b") for lora in lora_modules(model.model).values())
    assert not any(n.endswith((".lora_A.b", ".lora_B.b")) for n, _ in model.named_parameters())
    assert max_diff(logits(model), alone["a"]) < 1e-6


def test_delete_the_active_adapter_leaves_a_runnable_model(alone):
    model = make_model()
    model.set_adapter("c")
    model.delete_adapter("c")
    assert model.active_adapters() and model.active_adapters()[0] in model.peft_config
    assert max_diff(logits(model), alone[model.active_adapters()[0]]) < 1e-6
    # Deleting the module's last adapter takes its hook and child away.
    down = model.model.model.layers[0].mlp.down_proj
    assert not hasattr(down, "lora") and not down._forward_hooks


def test_delete_every_adapter_gives_back_base_outputs():
    model = make_model()
    for name in "abc":
        model.delete_adapter(name)
    assert model.active_adapters == [] and model.peft_config == {}
    assert torch.equal(logits(model), base_logits())
    assert not lora_modules(model.model)


def test_disable_adapter_context_runs_the_base(alone):
    model = make_model()
    with model.disable_adapter():
        assert torch.equal(logits(model), base_logits())
    assert max_diff(logits(model), alone["a"]) < 1e-6


def test_disable_adapter_restores_on_error(alone):
    model = make_model()
    with pytest.raises(RuntimeError):
        with model.disable_adapter():
            raise RuntimeError("boom")
    assert max_diff(logits(model), alone["a"]) < 1e-6


def test_disable_and_enable_adapters(alone):
    model = make_model()
    model.disable_adapters()
    assert torch.equal(logits(model), base_logits())
    model.enable_adapters()
    assert max_diff(logits(model), alone["a"]) < 1e-6


def test_save_all_and_reload_each(tmp_path, alone):
    model = make_model()
    model.save_pretrained(tmp_path / "all")
    # "a" is not named "default", so every adapter lives in its own sub-folder.
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["a", "b", "c"]
    fresh = AdapterModel(tiny_llama())
    for name in "abc":
        fresh.load_adapter(tmp_path / "all" / name, adapter_name=name)
    for name in "abc":
        fresh.set_adapter(name)
        assert max_diff(logits(fresh), alone[name]) < 1e-6


def test_mixed_rows_match_each_adapter_alone(alone):
    model = make_model().eval()  # mixed batches are for inference
    ids = input_ids(batch=4)
    out = model(input_ids=ids, adapter_names=["a", BASE_ROW, "c", "b"]).logits
    ref = {name: logits(_only(name), ids) for name in "abc"}
    assert max_diff(out[0], ref["a"][0]) < 1e-5
    assert max_diff(out[1], logits(tiny_llama(), ids)[1]) < 1e-5
    assert max_diff(out[2], ref["c"][2]) < 1e-5
    assert max_diff(out[3], ref["b"][3]) < 1e-5


def _only(name):
    model = make_model().eval()
    model.set_adapter(name)
    return model
