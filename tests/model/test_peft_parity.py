"""Numerical and file-format parity with PEFT 0.21.2, the reference implementation.

Each case builds the same tiny seeded base twice, trains nothing but gives the
adapter random weights, and checks both directions: PEFT's folder loads into
adapterkit, and adapterkit's folder loads into PEFT, with the same logits.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel as PeftPeftModel
from peft import get_peft_model as peft_get_peft_model
from safetensors import safe_open

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from helpers import FACTORIES, input_ids, logits, max_diff, randomize_adapter

TOL = 1e-5

# name -> (architecture, LoraConfig kwargs shared by both libraries)
CASES = {
    "gpt2-conv1d": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])),
    "llama-linear": ("llama", dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])),
    "bert-seq-cls": ("bert", dict(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")),
    "llama-embedding": ("llama", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "gpt2-embedding": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["wte", "c_fc"])),
    "llama-patterns": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                     rank_pattern={"v_proj": 2, "model.layers.1.self_attn.q_proj": 6},
                                     alpha_pattern={"up_proj": 3.0})),
    "llama-rslora": ("llama", dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["k_proj", "o_proj"])),
    "gpt2-bias-all": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn"], bias="all")),
    "bert-bias-lora-only": ("bert", dict(r=2, lora_alpha=4, target_modules=["query", "dense"], bias="lora_only",
                                         modules_to_save=["classifier"])),
    "llama-modules-to-save": ("llama", dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"])),
    "bert-bias-all": ("bert", dict(r=2, lora_alpha=4, target_modules=["value"], bias="all", task_type="SEQ_CLS")),
    "bert-all-linear": ("bert", dict(r=2, lora_alpha=4, target_modules="all-linear", task_type="SEQ_CLS")),
    "llama-layers": ("llama", dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1])),
    "llama-exclude": ("llama", dict(r=2, lora_alpha=4, target_modules="all-linear", exclude_modules=["o_proj"])),
}


def _peft_model(arch: str, kwargs: dict, adapter_name: str = "default"):
    config = PeftLoraConfig(init_lora_weights=False, **kwargs)
    model = peft_get_peft_model(FACTORIES[arch](), config, adapter_name=adapter_name)
    randomize_adapter(model, seed=11)
    return model.eval()


def _our_model(arch: str, kwargs: dict):
    model = get_peft_model(FACTORIES[arch](), LoraConfig(init_lora_weights=False, **kwargs))
    randomize_adapter(model, seed=12)
    return model.eval()


def _keys_and_shapes(path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_folder_loads_into_adapterkit(case, tmp_path):
    arch, kwargs = CASES[case]
    reference = _peft_model(arch, kwargs)
    expected = logits(reference)
    reference.save_pretrained(tmp_path / "peft")

    ours = AdapterModel.from_pretrained(FACTORIES[arch](), tmp_path / "peft")
    assert max_diff(logits(ours), expected) <= TOL
    # The adapter really does something: parity with the base would prove nothing.
    assert max_diff(expected, logits(FACTORIES[arch]())) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_adapterkit_folder_loads_into_peft(case, tmp_path):
    arch, kwargs = CASES[case]
    ours = _our_model(arch, kwargs)
    expected = logits(ours)
    ours.save_pretrained(tmp_path / "ours")

    reference = PeftPeftModel.from_pretrained(FACTORIES[arch](), str(tmp_path / "ours")).eval()
    assert max_diff(logits(reference), expected) <= TOL
    assert max_diff(expected, logits(FACTORIES[arch]())) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_safetensors_keys_and_shapes_as_peft(case, tmp_path):
    arch, kwargs = CASES[case]
    _peft_model(arch, kwargs).save_pretrained(tmp_path / "peft", save_embedding_layers=False)
    _our_model(arch, kwargs).save_pretrained(tmp_path / "ours")
    theirs = _keys_and_shapes(tmp_path / "peft" / "adapter_model.safetensors")
    mine = _keys_and_shapes(tmp_path / "ours" / "adapter_model.safetensors")
    if kwargs.get("bias") == "all" and kwargs.get("task_type") == "SEQ_CLS":
        # PEFT's bias="all" also writes the head's wrapper internals; they duplicate
        # classifier.bias (and the replaced original), so adapterkit reads but never writes them.
        quirks = {"base_model.model.classifier.modules_to_save.bias", "base_model.model.classifier.original_module.bias"}
        assert quirks <= set(theirs)
        theirs = {k: v for k, v in theirs.items() if k not in quirks}
    assert sorted(mine) == sorted(theirs)
    assert mine == theirs
    with safe_open(str(tmp_path / "ours" / "adapter_model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"] == "pt"


def test_peft_embedding_folder_with_saved_base_layer_loads(tmp_path):
    """PEFT's default save_embedding_layers="auto" also writes embed_tokens.base_layer.weight."""
    arch, kwargs = CASES["llama-embedding"]
    reference = _peft_model(arch, kwargs)
    reference.save_pretrained(tmp_path / "peft")
    assert any(k.endswith("embed_tokens.base_layer.weight")
               for k in _keys_and_shapes(tmp_path / "peft" / "adapter_model.safetensors"))
    ours = AdapterModel.from_pretrained(FACTORIES[arch](), tmp_path / "peft")
    assert max_diff(logits(ours), logits(reference)) <= TOL


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_legacy_bin_from_peft_loads(arch, tmp_path):
    kwargs = {"gpt2": CASES["gpt2-conv1d"], "llama": CASES["llama-linear"], "bert": CASES["bert-seq-cls"]}[arch][1]
    reference = _peft_model(arch, kwargs)
    reference.save_pretrained(tmp_path / "peft", safe_serialization=False)
    assert (tmp_path / "peft" / "adapter_model.bin").is_file()
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()
    ours = AdapterModel.from_pretrained(FACTORIES[arch](), tmp_path / "peft")
    assert max_diff(logits(ours), logits(reference)) <= TOL


def test_our_legacy_bin_loads_into_peft(tmp_path):
    arch, kwargs = CASES["llama-linear"]
    ours = _our_model(arch, kwargs)
    ours.save_pretrained(tmp_path / "ours", safe_serialization=False)
    assert (tmp_path / "ours" / "adapter_model.bin").is_file()
    reference = PeftPeftModel.from_pretrained(FACTORIES[arch](), str(tmp_path / "ours")).eval()
    assert max_diff(logits(reference), logits(ours)) <= TOL


def _two_adapter_peft(arch: str):
    model = peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                  init_lora_weights=False))
    model.add_adapter("other", PeftLoraConfig(r=3, lora_alpha=6, target_modules=["v_proj"], init_lora_weights=False))
    randomize_adapter(model, seed=5)  # only "default" is trainable here
    model.set_adapter("other")
    randomize_adapter(model, seed=6)
    return model.eval()


def test_peft_multi_adapter_folder_loads_into_adapterkit(tmp_path):
    reference = _two_adapter_peft("llama")
    reference.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "adapter_config.json").is_file()
    assert (tmp_path / "multi" / "other" / "adapter_model.safetensors").is_file()

    ours = AdapterModel.from_pretrained(FACTORIES["llama"](), tmp_path / "multi")
    ours.load_adapter(tmp_path / "multi" / "other", adapter_name="other")
    for name in ("default", "other"):
        reference.set_adapter(name)
        ours.set_adapter(name)
        assert max_diff(logits(ours), logits(reference)) <= TOL
    assert ours.peft_config["other"].r == 3


def test_adapterkit_multi_adapter_folder_loads_into_peft(tmp_path):
    ours = get_peft_model(FACTORIES["llama"](), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    ours.add_adapter("other", LoraConfig(r=3, lora_alpha=6, target_modules=["v_proj"]))
    randomize_adapter(ours, seed=9)
    ours.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "other" / "adapter_config.json").is_file()

    reference = PeftPeftModel.from_pretrained(FACTORIES["llama"](), str(tmp_path / "multi")).eval()
    reference.load_adapter(str(tmp_path / "multi" / "other"), adapter_name="other")
    for name in ("default", "other"):
        reference.set_adapter(name)
        ours.set_adapter(name)
        assert max_diff(logits(ours), logits(reference)) <= TOL


def test_trainable_parameter_counts_match_peft():
    for case in ("gpt2-conv1d", "llama-patterns", "bert-seq-cls", "llama-embedding", "gpt2-bias-all",
                 "bert-bias-lora-only"):
        arch, kwargs = CASES[case]
        reference = peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(**kwargs))
        ours = get_peft_model(FACTORIES[arch](), LoraConfig(**kwargs))
        assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters(), case


def test_print_trainable_parameters_matches_peft(capsys):
    arch, kwargs = CASES["llama-linear"]
    peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(**kwargs)).print_trainable_parameters()
    theirs = capsys.readouterr().out.strip()
    get_peft_model(FACTORIES[arch](), LoraConfig(**kwargs)).print_trainable_parameters()
    assert capsys.readouterr().out.strip() == theirs


def test_fresh_adapters_are_initialised_like_peft():
    """init_lora_weights=True: B = 0 (a no-op), A kaiming-uniform with PEFT's bound, in both."""
    arch, kwargs = CASES["llama-linear"]
    reference = peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(**kwargs))
    ours = get_peft_model(FACTORIES[arch](), LoraConfig(**kwargs))
    theirs = {k.replace(".default.weight", ".weight"): v for k, v in reference.named_parameters() if v.requires_grad}
    mine = ours.adapter_state_dict()
    assert sorted(mine) == sorted(theirs)
    for key, tensor in mine.items():
        if ".lora_B." in key:
            assert torch.count_nonzero(tensor) == 0 and torch.count_nonzero(theirs[key]) == 0, key
        else:
            bound = 1 / tensor.shape[1] ** 0.5  # kaiming_uniform(a=sqrt(5)) on (r, in)
            assert tensor.abs().max() <= bound and theirs[key].abs().max() <= bound, key
            assert tensor.std() > bound / 4, key
    ids = input_ids()
    assert max_diff(logits(ours, ids), logits(FACTORIES[arch](), ids)) == 0.0
