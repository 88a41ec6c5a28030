"""load_adapter / from_pretrained: checked before anything changes, typed errors, overwrite rules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import (
    AdapterConfigError,
    AdapterExistsError,
    AdapterKeyMismatchError,
    AdapterModel,
    AdapterShapeMismatchError,
    BaseModelMismatchError,
    LoraConfig,
    TargetModulesError,
    get_peft_model,
)
from helpers import logits, max_diff, randomize_adapter, tiny_llama

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A non-trivial r=4 adapter on q_proj/v_proj of the seed-0 tiny Llama, and its logits."""
    folder = tmp_path_factory.mktemp("adapters") / "r4"
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model, seed=21)
    model.save_pretrained(folder)
    return folder, logits(model)


def copy_folder(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir(parents=True)
    config = json.loads((src / "adapter_config.json").read_text())
    tensors = load_file(str(src / WEIGHTS))
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    from safetensors import safe_open

    with safe_open(str(src / WEIGHTS), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(dst / WEIGHTS), metadata=metadata)
    return dst


def state_of(model):
    return (
        logits(model),
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: (p.requires_grad, p.dtype) for n, p in model.named_parameters()},
        {n: c.to_json() for n, c in model.peft_config.items()},
        list(model.active_adapters),
        [n for n, _ in model.named_modules()],
    )


def assert_same_state(before, after):
    out_b, params_b, flags_b, configs_b, active_b, modules_b = before
    out_a, params_a, flags_a, configs_a, active_a, modules_a = after
    assert torch.equal(out_a, out_b)
    assert list(params_a) == list(params_b)
    assert all(torch.equal(params_a[n], params_b[n]) for n in params_b)
    assert flags_a == flags_b and configs_a == configs_b and active_a == active_b and modules_a == modules_b


def test_from_pretrained_reproduces_outputs(saved):
    folder, expected = saved
    model = AdapterModel.from_pretrained(tiny_llama(), folder)
    assert max_diff(logits(model), expected) == 0.0
    assert model.active_adapters() == ["default"]
    assert model.peft_config["default"].r == 4
    assert not any(p.requires_grad for p in model.parameters())  # is_trainable=False by default
    assert model.peft_config["default"].inference_mode is True


def test_from_pretrained_with_name_and_trainable(saved):
    folder, expected = saved
    model = AdapterModel.from_pretrained(tiny_llama(), folder, adapter_name="mine", is_trainable=True)
    assert model.active_adapters == ["mine"] and list(model.peft_config) == ["mine"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A.mine", "lora_B.mine")) for n in trainable)
    assert max_diff(logits(model), expected) == 0.0


def test_load_into_a_fresh_no_op_adapter_of_the_same_name(saved):
    """The seed example's pattern: get_peft_model, then load_adapter(..., 'default')."""
    folder, expected = saved
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.load_adapter(folder, adapter_name="default")
    assert max_diff(logits(model), expected) == 0.0


def test_load_over_a_trained_adapter_is_refused_with_both_ways_out(saved):
    folder, _ = saved
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    before = state_of(model)
    with pytest.raises(AdapterExistsError) as info:
        model.load_adapter(folder, adapter_name="default")
    message = str(info.value)
    assert "'default'" in message and "adapter_name" in message and "overwrite=True" in message
    assert_same_state(before, state_of(model))


def test_overwrite_rereads_the_config_from_disk(saved):
    folder, expected = saved
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=2, target_modules=["k_proj"],
                                                    init_lora_weights=False))
    model.load_adapter(folder, adapter_name="default", overwrite=True)
    config = model.peft_config["default"]
    assert config.r == 4 and config.target_modules == ["q_proj", "v_proj"]
    assert max_diff(logits(model), expected) == 0.0
    assert not hasattr(model.model.model.layers[0].self_attn.k_proj, "lora")


def test_load_under_a_second_name_keeps_the_first(saved):
    folder, expected = saved
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["k_proj"], init_lora_weights=False))
    first = logits(model)
    model.load_adapter(folder, adapter_name="second")
    assert model.active_adapters == ["default"]
    assert max_diff(logits(model), first) == 0.0
    model.set_adapter("second")
    assert max_diff(logits(model), expected) == 0.0


def _loaded_model(saved):
    folder, _ = saved
    model = AdapterModel.from_pretrained(tiny_llama(), folder, adapter_name="good")
    return model


def _wrong_shapes(tensors):
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros(3, tensors[key].shape[1])


def _drop_one(tensors):
    del tensors[next(k for k in sorted(tensors) if k.endswith("v_proj.lora_B.weight"))]


def _add_one(tensors):
    tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"] = torch.zeros(4, 16)


@pytest.mark.parametrize("edit, error, words", [
    (_wrong_shapes, AdapterShapeMismatchError, ["model.layers.0.self_attn.q_proj", "expected [4, 16]", "found [3, 16]",
                                                "LlamaForCausalLM, fingerprint"]),
    (_drop_one, AdapterKeyMismatchError, ["1 missing key", "v_proj.lora_B.weight", "target_modules"]),
    (_add_one, AdapterKeyMismatchError, ["1 unexpected key", "o_proj.lora_A.weight"]),
])
@pytest.mark.parametrize("name, overwrite", [("new", False), ("good", True)])
def test_failed_load_leaves_the_model_exactly_as_before(saved, tmp_path, edit, error, words, name, overwrite):
    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_tensors=edit)
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(error) as info:
        model.load_adapter(bad, adapter_name=name, overwrite=overwrite)
    message = str(info.value)
    assert str(bad / WEIGHTS) in message
    for word in words:
        assert word in message, (word, message)
    assert_same_state(before, state_of(model))


def test_shape_mismatch_from_another_base_names_module_and_recorded_base(saved):
    folder, _ = saved
    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fingerprint differs too
        with pytest.raises(AdapterShapeMismatchError) as info:
            AdapterModel.from_pretrained(wider, folder)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj (A): expected [4, 32], found [4, 16]" in message
    assert "its file records base" in message


def test_config_targeting_nothing_in_this_model(saved, tmp_path):
    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_config=lambda c: c.update(target_modules=["c_attn"]))
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(TargetModulesError) as info:
        model.load_adapter(bad, adapter_name="x")
    assert "c_attn" in str(info.value) and "(Linear)" in str(info.value)
    assert_same_state(before, state_of(model))


def test_config_missing_r_is_refused_before_loading(saved, tmp_path):
    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_config=lambda c: c.pop("r"))
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(AdapterConfigError, match="lacks r"):
        model.load_adapter(bad, adapter_name="x")
    assert_same_state(before, state_of(model))


def test_missing_and_truncated_files_leave_the_model_alone(saved, tmp_path):
    from adapterkit import AdapterFolderNotFoundError, CorruptAdapterFileError

    folder, _ = saved
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(AdapterFolderNotFoundError):
        model.load_adapter(tmp_path / "missing", adapter_name="x")
    bad = copy_folder(folder, tmp_path / "bad")
    (bad / WEIGHTS).write_bytes((bad / WEIGHTS).read_bytes()[:100])
    with pytest.raises(CorruptAdapterFileError):
        model.load_adapter(bad, adapter_name="good", overwrite=True)
    assert_same_state(before, state_of(model))


def test_other_base_warns_and_strict_base_refuses(saved):
    folder, expected = saved
    with pytest.warns(UserWarning, match="trained on base"):
        AdapterModel.from_pretrained(tiny_llama(seed=1), folder)
    with pytest.raises(BaseModelMismatchError):
        AdapterModel.from_pretrained(tiny_llama(seed=1), folder, strict_base=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdapterModel.from_pretrained(tiny_llama(), folder)  # the same base: silent


def test_wrapping_a_model_that_already_carries_adapters_is_refused(saved):
    from adapterkit import AdapterStateError

    folder, _ = saved
    model = AdapterModel.from_pretrained(tiny_llama(), folder)
    with pytest.raises(AdapterStateError):
        AdapterModel(model.get_base_model())


def test_seq_cls_no_op_adapter_can_be_loaded_over(tmp_path):
    """A fresh adapter's classifier copy equals the original: still a no-op, so the seed
    pattern (get_peft_model, then load_adapter into 'default') works for SEQ_CLS too."""
    from helpers import tiny_bert

    config = dict(r=2, lora_alpha=4, target_modules=["query"], task_type="SEQ_CLS")
    trained = get_peft_model(tiny_bert(), LoraConfig(**config))
    randomize_adapter(trained, seed=3)
    trained.save_pretrained(tmp_path / "cls")
    model = get_peft_model(tiny_bert(), LoraConfig(**config))
    model.load_adapter(tmp_path / "cls", adapter_name="default")
    assert max_diff(logits(model), logits(trained)) == 0.0
    # Only the head trained (LoRA still zero): no longer a no-op, so it is protected.
    touched = get_peft_model(tiny_bert(), LoraConfig(**config))
    with torch.no_grad():
        touched.model.classifier.modules_to_save["default"].bias.add_(1.0)
    with pytest.raises(AdapterExistsError):
        touched.load_adapter(tmp_path / "cls", adapter_name="default")


def test_unknown_config_field_on_load_warns_exactly_once(saved, tmp_path):
    folder, expected = saved
    newer = copy_folder(folder, tmp_path / "newer", edit_config=lambda c: c.update(some_future_option=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AdapterModel.from_pretrained(tiny_llama(), newer)
    relevant = [w for w in caught if "some_future_option" in str(w.message)]
    assert len(relevant) == 1 and len(caught) == 1, [str(w.message) for w in caught]
    assert max_diff(logits(model), expected) == 0.0


# --- hostile values: every check before the model is touched --------------------------------
def _poison(key_suffix: str, value: float):
    def edit(tensors):
        key = next(k for k in sorted(tensors) if k.endswith(key_suffix))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value
    return edit


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_tensor_is_refused_unless_allowed(saved, tmp_path, value):
    from adapterkit import NonFiniteAdapterError

    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_tensors=_poison("layers.1.self_attn.v_proj.lora_B.weight", value))
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(NonFiniteAdapterError, match="allow_nonfinite=True") as info:
        model.load_adapter(bad, adapter_name="x")
    assert "layers.1.self_attn.v_proj.lora_B.weight" in str(info.value)
    assert_same_state(before, state_of(model))
    model.load_adapter(bad, adapter_name="x", allow_nonfinite=True)
    loaded = model.adapter_state_dict("x")
    key = next(k for k in loaded if k.endswith("layers.1.self_attn.v_proj.lora_B.weight"))
    stored = loaded[key].reshape(-1)[3].item()
    assert stored == value or (value != value and stored != stored)
    AdapterModel.from_pretrained(tiny_llama(), bad, allow_nonfinite=True)


@pytest.mark.parametrize("where", ["lora_alpha", "alpha_pattern"])
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_nonfinite_scale_is_refused_unless_allowed(saved, tmp_path, where, text):
    from adapterkit import NonFiniteAdapterError

    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad")
    config = json.loads((bad / "adapter_config.json").read_text())
    if where == "alpha_pattern":
        config["alpha_pattern"] = {"v_proj": 1.0}
    else:
        config["lora_alpha"] = 1.0
    raw = json.dumps(config).replace("1.0", text)
    (bad / "adapter_config.json").write_text(raw)
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(NonFiniteAdapterError, match=where):
        model.load_adapter(bad, adapter_name="x")
    assert_same_state(before, state_of(model))
    model.load_adapter(bad, adapter_name="x", allow_nonfinite=True)


def test_nan_alpha_in_add_adapter_is_refused():
    from adapterkit import NonFiniteAdapterError

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(NonFiniteAdapterError):
        model.add_adapter("b", LoraConfig(r=2, lora_alpha=float("nan"), target_modules=["v_proj"]))
    assert list(model.peft_config) == ["default"]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_floating_tensor_in_the_last_layer_is_refused_before_any_layer_changes(saved, tmp_path, dtype):
    from adapterkit import AdapterDtypeError

    folder, _ = saved

    def to_dtype(tensors):
        key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        tensors[key] = (tensors[key] * 10).to(dtype)

    bad = copy_folder(folder, tmp_path / "bad", edit_tensors=to_dtype)
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(AdapterDtypeError, match=str(dtype).removeprefix("torch.")):
        model.load_adapter(bad, adapter_name="x")
    assert_same_state(before, state_of(model))
    model.load_adapter(folder, adapter_name="x")  # and nothing half-loaded trips a later valid load


def test_alpha_pattern_that_is_not_a_number_changes_nothing(saved, tmp_path):
    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_config=lambda c: c.update(alpha_pattern={"v_proj": "high"}))
    model = _loaded_model(saved)
    before = state_of(model)
    with pytest.raises(AdapterConfigError, match="field alpha_pattern"):
        model.load_adapter(bad, adapter_name="x")
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("fail_at", [1, 3])
def test_an_install_that_fails_midway_is_rolled_back(saved, monkeypatch, fail_at):
    """Every input is checked first, so only an exhausted resource can fail an install; it is undone."""
    from adapterkit.core.layer import LoraAdapters

    folder, expected = saved
    model = _loaded_model(saved)
    before = state_of(model)
    real_add, calls = LoraAdapters.add, []

    def failing_add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise MemoryError("out of memory (injected)")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(LoraAdapters, "add", failing_add)
    with pytest.raises(MemoryError):
        model.load_adapter(folder, adapter_name="x")
    monkeypatch.setattr(LoraAdapters, "add", real_add)
    assert_same_state(before, state_of(model))
    model.load_adapter(folder, adapter_name="x")
    model.set_adapter("x")
    assert max_diff(logits(model), expected) == 0.0


BAD_NAMES = ["", ".", "a.b", "a/b", "a\\b", "__base__", None, 7, ["x"], "a\x00b", "tab\there", "x" * 300, "\ud800"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:12] for n in BAD_NAMES])
def test_unusable_adapter_names_are_typed_errors(saved, name):
    from adapterkit import AdapterError, InvalidAdapterNameError

    folder, _ = saved
    model = _loaded_model(saved)
    before = state_of(model)
    for attempt in (lambda: model.load_adapter(folder, adapter_name=name),
                    lambda: model.add_adapter(name, LoraConfig(r=2, target_modules=["q_proj"]))):
        with pytest.raises(InvalidAdapterNameError) as info:
            attempt()
        assert isinstance(info.value, (AdapterError, ValueError)) and "Pick another name" in str(info.value)
    assert_same_state(before, state_of(model))


def test_values_that_overflow_the_models_dtype_are_refused_unless_allowed(saved, tmp_path):
    """Finite in the file, inf once copied into a float16 model: as poisonous as a NaN."""
    from adapterkit import NonFiniteAdapterError

    folder, _ = saved
    bad = copy_folder(folder, tmp_path / "bad", edit_tensors=lambda t: t.update(
        {k: v * 1e6 for k, v in t.items() if k.endswith("layers.1.self_attn.q_proj.lora_B.weight")}))
    AdapterModel.from_pretrained(tiny_llama(), bad, adapter_name="fine-in-float32")
    half = tiny_llama().half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a float16 copy fingerprints like its float32 base, or not: not the point
        with pytest.raises(NonFiniteAdapterError, match="float16"):
            AdapterModel.from_pretrained(half, bad)
        AdapterModel.from_pretrained(tiny_llama().half(), bad, allow_nonfinite=True)
