"""Which modules a config targets: exact / dotted-suffix lists, full-match regexes, all-linear."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model as peft_get_peft_model
from torch import nn

from adapterkit import LoraConfig, TargetModulesError
from adapterkit.core.targeting import find_targets, module_kind
from helpers import tiny_bert, tiny_gpt2, tiny_llama


def names(model, **kwargs) -> list[str]:
    return [t.name for t in find_targets(model, LoraConfig(**kwargs))]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.embed = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10)


def test_list_entry_is_exact_or_dotted_suffix_never_substring():
    assert names(Net(), target_modules=["proj"]) == ["layers.0.proj", "layers.1.proj"]
    assert names(Net(), target_modules=["q_proj"]) == ["layers.0.q_proj", "layers.1.q_proj"]
    assert names(Net(), target_modules=["1.proj"]) == ["layers.1.proj"]
    assert names(Net(), target_modules=["layers.0.q_proj"]) == ["layers.0.q_proj"]


def test_substring_of_a_name_matches_nothing():
    # "proj" is a substring of every Llama projection but the dotted suffix of none.
    with pytest.raises(TargetModulesError):
        names(tiny_llama(), target_modules=["proj"])
    with pytest.raises(TargetModulesError):
        names(tiny_llama(), target_modules=["_proj"])


def test_string_is_a_full_match_regex():
    assert names(tiny_llama(), target_modules=r".*\.0\.self_attn\.(q|v)_proj") == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    # A bare name as a string is a regex that must match the whole dotted name.
    with pytest.raises(TargetModulesError):
        names(tiny_llama(), target_modules="q_proj")


def _peft_targets(model, **kwargs) -> set[str]:
    wrapped = peft_get_peft_model(model, PeftLoraConfig(**kwargs))
    prefix = "base_model.model."
    return {n[len(prefix):] for n, m in wrapped.named_modules() if hasattr(m, "lora_A") and n.startswith(prefix)}


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_all_linear_matches_peft_and_skips_the_head(factory):
    ours = names(factory(), target_modules="all-linear")
    assert "lm_head" not in ours and not any("wte" in n or "embed" in n for n in ours)
    assert set(ours) == _peft_targets(factory(), target_modules="all-linear")


def test_all_linear_includes_gpt2_conv1d():
    targets = find_targets(tiny_gpt2(), LoraConfig(target_modules="all-linear"))
    assert {t.kind.name for t in targets} == {"conv1d"}
    assert "transformer.h.0.attn.c_attn" in [t.name for t in targets]


def test_kinds():
    gpt2 = tiny_gpt2()
    assert module_kind(gpt2.transformer.h[0].attn.c_attn).name == "conv1d"
    assert module_kind(gpt2.transformer.wte).name == "embedding"
    assert module_kind(gpt2.lm_head).name == "linear"
    assert module_kind(gpt2.transformer.ln_f) is None


@pytest.mark.parametrize("kwargs", [
    dict(target_modules=["q_proj", "v_proj"], exclude_modules=["v_proj"]),
    dict(target_modules="all-linear", exclude_modules=r".*mlp.*"),
    dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1]),
    dict(target_modules=["q_proj", "o_proj"], layers_to_transform=0, layers_pattern="layers"),
])
def test_exclusion_and_layers_match_peft(kwargs):
    ours = names(tiny_llama(), **kwargs)
    assert ours and set(ours) == _peft_targets(tiny_llama(), **kwargs)


def test_exclude_wins_over_targets():
    assert names(tiny_llama(), target_modules=["q_proj", "v_proj"], exclude_modules=["v_proj"]) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_modules_to_save_are_not_lora_targets():
    got = names(tiny_bert(), target_modules=["query", "dense"], modules_to_save=["pooler"])
    assert not any(n.startswith("bert.pooler") for n in got)


def test_nothing_matched_names_closest_modules_with_types():
    with pytest.raises(TargetModulesError) as info:
        names(tiny_llama(), target_modules=["q_prj"])
    message = str(info.value)
    assert "q_prj" in message and "LlamaForCausalLM" in message
    assert "q_proj (Linear)" in message


def test_partly_matched_names_the_unmatched_entries():
    with pytest.raises(TargetModulesError) as info:
        names(tiny_llama(), target_modules=["q_proj", "vv_proj", "c_attn"])
    message = str(info.value)
    assert "'vv_proj'" in message and "'c_attn'" in message
    assert "['q_proj']" in message  # what did match
    assert "v_proj (Linear)" in message


def test_unset_target_modules_says_how_to_fix():
    with pytest.raises(TargetModulesError, match="all-linear"):
        names(tiny_llama(), target_modules=None)


def test_embedding_and_linear_targets_have_their_kinds():
    targets = find_targets(tiny_llama(), LoraConfig(target_modules=["embed_tokens", "lm_head"]))
    assert [(t.name, t.kind.name) for t in targets] == [("model.embed_tokens", "embedding"), ("lm_head", "linear")]


def test_find_targets_does_not_change_the_model():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names(model, target_modules="all-linear")
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
