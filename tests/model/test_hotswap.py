"""hotswap_adapter: weights replaced in place, equal to a fresh load and to PEFT's hotswap on the
same folders; a torch.compile'd model does not recompile; a refused swap changes nothing."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel
from peft import get_peft_model as peft_get_peft_model
from peft.utils.hotswap import hotswap_adapter as peft_hotswap_adapter
from peft.utils.hotswap import prepare_model_for_compiled_hotswap as peft_prepare
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import adapterkit
from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.errors import AdapterError, HotswapError, UnknownAdapterError
from helpers import input_ids, logits, max_diff, randomize_adapter, tiny_llama

TOL = 1e-5

# name -> LoraConfig kwargs; "first" is loaded, the others are swapped in.
FOLDERS = {
    "first": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "same": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "smaller": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    "alpha": dict(r=4, lora_alpha=3, target_modules=["q_proj", "v_proj"]),
    "smaller_alpha": dict(r=2, lora_alpha=7, target_modules=["q_proj", "v_proj"]),
    "subset": dict(r=4, lora_alpha=8, target_modules=["q_proj"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 3},
                     alpha_pattern={"q_proj": 2}),
    # refused
    "larger": dict(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "more_modules": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "k_proj"]),
    "dropout": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
    "bias": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias="all"),
    "head": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "pissa": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa"),
}
SWAPPABLE = ["same", "smaller", "alpha", "smaller_alpha", "subset", "patterns"]
REFUSED = ["larger", "more_modules", "dropout", "bias", "head", "pissa"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hotswap")
    for seed, (name, kwargs) in enumerate(FOLDERS.items()):
        model = peft_get_peft_model(tiny_llama(), PeftLoraConfig(**{"init_lora_weights": False, **kwargs}))
        randomize_adapter(model, seed=seed)
        model.save_pretrained(root / name)
    return root


def _fresh(folder):
    return AdapterModel.from_pretrained(tiny_llama(), folder).eval()


@pytest.mark.parametrize("name", SWAPPABLE)
def test_hotswap_equals_a_fresh_load_and_peft(name, folders):
    ours = _fresh(folders / "first")
    before = {n: p for n, p in ours.named_parameters()}
    ours.hotswap_adapter(folders / name, adapter_name="default")
    assert {n: p for n, p in ours.named_parameters()}.keys() == before.keys()
    assert all(p is before[n] for n, p in ours.named_parameters())  # same tensors: nothing re-injected
    expected = logits(_fresh(folders / name))
    assert max_diff(logits(ours), expected) <= TOL

    reference = PeftModel.from_pretrained(tiny_llama(), folders / "first").eval()
    if name == "patterns":  # PEFT refuses any alpha_pattern change; adapterkit sets each module's scale
        with pytest.raises(ValueError, match="alpha_pattern"):
            peft_hotswap_adapter(reference, str(folders / name), adapter_name="default", torch_device="cpu")
    else:
        peft_hotswap_adapter(reference, str(folders / name), adapter_name="default", torch_device="cpu")
        assert max_diff(logits(ours), logits(reference)) <= TOL
    assert max_diff(expected, logits(_fresh(folders / "first"))) > 1e-3  # the swap did change the outputs


def test_mixed_batches_use_the_swapped_scale(folders):
    """Mixed batches read the scale from the rank pack, not from the per-adapter float: both change."""
    ours = _fresh(folders / "first")
    ours.hotswap_adapter(folders / "smaller_alpha")
    ids = input_ids(batch=2)
    with torch.no_grad():
        mixed = ours(input_ids=ids, adapter_names=["default", "__base__"]).logits
    assert max_diff(mixed[:1], logits(_fresh(folders / "smaller_alpha"), ids)[:1]) <= TOL
    assert max_diff(mixed[1:], logits(tiny_llama(), ids)[1:]) <= TOL


def test_saving_after_a_swap_writes_the_swapped_adapter(folders, tmp_path):
    ours = _fresh(folders / "first")
    ours.hotswap_adapter(folders / "smaller_alpha")
    ours.hotswap_adapter(folders / "patterns")
    expected = logits(ours)
    ours.save_pretrained(tmp_path / "saved")
    assert max_diff(logits(_fresh(tmp_path / "saved")), expected) <= TOL
    assert max_diff(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path / "saved").eval()), expected) <= TOL


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_does_not_recompile(folders, backend):
    ours = _fresh(folders / "first")
    adapterkit.prepare_model_for_compiled_hotswap(ours)  # scales become tensors: alpha may change too
    counter = CompileCounterWithBackend(backend)  # counts frames, then compiles with `backend`
    compiled = torch.compile(ours, backend=counter)
    ids = input_ids()
    with torch.no_grad():
        compiled(input_ids=ids)
        frames = counter.frame_count
        assert frames >= 1
        for name in ("same", "smaller", "alpha", "subset", "smaller_alpha"):
            adapterkit.hotswap_adapter(compiled, folders / name, adapter_name="default")
            out = compiled(input_ids=ids).logits
            assert counter.frame_count == frames, f"recompiled after swapping in {name}"
            assert max_diff(out, logits(_fresh(folders / name), ids)) <= TOL, name


def test_padding_to_a_target_rank_lets_larger_ranks_swap_in_without_recompiling(folders, tmp_path):
    ours = _fresh(folders / "first")
    ours.load_adapter(folders / "smaller", adapter_name="other")
    expected = logits(ours)
    adapterkit.prepare_model_for_compiled_hotswap(ours, target_rank=8)
    assert max_diff(logits(ours), expected) == 0.0  # zero-padding changes nothing
    assert {lora.info[n].rank for lora in ours._loras().values() for n in lora.info} == {8}
    ours.save_pretrained(tmp_path / "padded")  # the config now says r=8, with the same scales
    assert max_diff(logits(_fresh(tmp_path / "padded")), expected) <= TOL
    counter = CompileCounter()
    compiled = torch.compile(ours, backend=counter)
    ids = input_ids()
    with torch.no_grad():
        compiled(input_ids=ids)
        for name in ("larger", "smaller_alpha", "patterns"):
            adapterkit.hotswap_adapter(compiled, folders / name)
            assert max_diff(compiled(input_ids=ids).logits, logits(_fresh(folders / name), ids)) <= TOL, name
    assert counter.frame_count == 1
    reference = PeftModel.from_pretrained(tiny_llama(), folders / "first").eval()
    peft_prepare(reference, target_rank=8, config=reference.peft_config)
    peft_hotswap_adapter(reference, str(folders / "larger"), adapter_name="default", torch_device="cpu")
    assert max_diff(logits(reference), logits(_fresh(folders / "larger"))) <= TOL  # PEFT agrees
    for bad in (4, 0, -1, "8", True, 2.5):
        with pytest.raises(HotswapError):
            adapterkit.prepare_model_for_compiled_hotswap(_fresh(folders / "larger"), target_rank=bad)


def test_compiled_unprepared_model_refuses_a_scale_change(folders):
    ours = _fresh(folders / "first")
    counter = CompileCounter()
    compiled = torch.compile(ours, backend=counter)
    ids = input_ids()
    with torch.no_grad():
        expected = compiled(input_ids=ids).logits
        with pytest.raises(HotswapError, match="prepare_model_for_compiled_hotswap"):
            adapterkit.hotswap_adapter(compiled, folders / "alpha")
        assert torch.equal(compiled(input_ids=ids).logits, expected)
        adapterkit.hotswap_adapter(compiled, folders / "smaller")  # alpha / r unchanged: fine
        assert max_diff(compiled(input_ids=ids).logits, logits(_fresh(folders / "smaller"), ids)) <= TOL
    assert counter.frame_count == 1
    with pytest.raises(HotswapError, match="before torch.compile"):
        adapterkit.prepare_model_for_compiled_hotswap(compiled)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: c.to_dict() for n, c in model.peft_config.items()},
            [(p, float(lora.info["default"].scale)) for p, lora in model._loras().items()])


def _same(a, b):
    return a[1] == b[1] and a[2] == b[2] and a[0].keys() == b[0].keys() and all(
        torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_refused_swaps_change_nothing(folders, tmp_path):
    ours = _fresh(folders / "first")
    before = _state(ours)
    attempts = [(folders / name, "default", HotswapError) for name in REFUSED]
    attempts += [(folders / "same", "nope", UnknownAdapterError), (tmp_path / "missing", "default", AdapterError)]
    for folder, adapter_name, error in attempts:
        with pytest.raises(error):
            ours.hotswap_adapter(folder, adapter_name=adapter_name)
        assert _same(_state(ours), before), folder
    ours.merge_adapter()
    merged = _state(ours)
    with pytest.raises(HotswapError, match="unmerge"):
        ours.hotswap_adapter(folders / "same")
    assert _same(_state(ours), merged)
    with pytest.raises(HotswapError, match="AdapterModel"):
        adapterkit.hotswap_adapter(tiny_llama(), folders / "same")


def test_a_folder_for_another_architecture_is_refused_before_any_copy(folders, tmp_path):
    other = AdapterModel(tiny_llama())
    other.add_adapter("default", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    wide = peft_get_peft_model(_wider_llama(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    wide.save_pretrained(tmp_path / "wide")
    before = _state(other)
    with pytest.raises(AdapterError):
        other.hotswap_adapter(tmp_path / "wide")
    assert _same(_state(other), before)


def _wider_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))


def test_padding_keeps_a_trainable_adapter_trainable():
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    adapterkit.prepare_model_for_compiled_hotswap(model, target_rank=4)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(4 in p.shape for p in trainable)  # A and B of 2 layers, rank 4
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8
