"""Merge and unmerge, merge_and_unload, unload, safe_merge and tied weights."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model as peft_get_peft_model

from adapterkit import AdapterStateError, LoraConfig, NaNInMergeError, get_peft_model
from adapterkit.core.layer import LoraAdapters
from helpers import FACTORIES, TARGETS, logits, max_diff, randomize_adapter, tiny_bert, tiny_llama


def adapted(arch: str = "llama", **kwargs):
    config = dict(r=4, lora_alpha=8, target_modules=TARGETS[arch])
    config.update(kwargs)
    model = get_peft_model(FACTORIES[arch](), LoraConfig(**config))
    randomize_adapter(model, seed=31)
    return model


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora." not in n}


def assert_plain(model, arch: str) -> None:
    """No trace of adapters: modules, children, hooks, keys."""
    for name, module in model.named_modules():
        assert not isinstance(module, LoraAdapters), name
        assert type(module).__name__ not in ("LoraAdapters", "ModulesToSave"), name
        assert not hasattr(module, "lora"), name
        assert not module._forward_hooks, name
    assert list(model.state_dict()) == list(FACTORIES[arch]().state_dict())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_merged_outputs_equal_unmerged_and_unmerge_restores(arch):
    model = adapted(arch)
    unmerged, weights = logits(model), base_weights(model)
    model.merge_adapter()
    assert model.merged_adapters == ["default"]
    assert max_diff(logits(model), unmerged) < 1e-5
    assert any(max_diff(p, weights[n]) > 1e-4 for n, p in base_weights(model).items())
    model.merge_adapter()  # idempotent
    assert max_diff(logits(model), unmerged) < 1e-5
    model.unmerge_adapter()
    assert model.merged_adapters == []
    assert max_diff(logits(model), unmerged) < 1e-6
    assert all(max_diff(p, weights[n]) < 1e-6 for n, p in base_weights(model).items())


def test_merge_embedding_adapter():
    model = adapted("llama", target_modules=["embed_tokens", "q_proj"])
    unmerged = logits(model)
    model.merge_adapter()
    assert max_diff(logits(model), unmerged) < 1e-5


def test_merged_equals_peft_merged():
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS["llama"], init_lora_weights=False)
    reference = peft_get_peft_model(tiny_llama(), PeftLoraConfig(**kwargs))
    randomize_adapter(reference, seed=7)
    ours = get_peft_model(tiny_llama(), LoraConfig(**kwargs))
    with torch.no_grad():
        theirs = {n.replace(".default.weight", ".weight"): p for n, p in reference.named_parameters() if p.requires_grad}
        for key, tensor in ours.adapter_state_dict().items():
            tensor.copy_(theirs[key])
    merged_theirs = reference.merge_and_unload()
    merged_ours = ours.merge_and_unload()
    sd_theirs, sd_ours = merged_theirs.state_dict(), merged_ours.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    assert all(max_diff(sd_ours[k], sd_theirs[k]) < 1e-6 for k in sd_theirs)


def test_disable_adapter_while_merged_runs_the_base_and_remerges():
    model = adapted()
    unmerged = logits(model)
    model.merge_adapter()
    with model.disable_adapter():
        assert max_diff(logits(model), logits(tiny_llama())) < 1e-6
    assert model.merged_adapters == ["default"]
    assert max_diff(logits(model), unmerged) < 1e-5


def test_safe_merge_with_nan_raises_and_changes_nothing():
    model = adapted()
    with torch.no_grad():
        model.model.model.layers[1].self_attn.v_proj.lora.lora_B["default"][0, 0] = float("nan")
    weights = base_weights(model)
    with pytest.raises(NaNInMergeError) as info:
        model.merge_adapter(safe_merge=True)
    assert "model.layers.1.self_attn.v_proj" in str(info.value)
    assert isinstance(info.value, AdapterStateError)
    assert model.merged_adapters == []
    assert all(torch.equal(p, weights[n]) for n, p in base_weights(model).items())
    with pytest.raises(NaNInMergeError):
        model.merge_and_unload(safe_merge=True)
    assert model.peft_config and any(isinstance(m, LoraAdapters) for m in model.modules())
    assert all(torch.equal(p, weights[n]) for n, p in base_weights(model).items())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merge_and_unload_returns_a_plain_model(arch):
    model = adapted(arch)
    expected = logits(model)
    plain = model.merge_and_unload()
    assert type(plain) is type(FACTORIES[arch]())
    assert_plain(plain, arch)
    assert max_diff(logits(plain), expected) < 1e-5


def test_merge_and_unload_keeps_the_trained_head():
    model = get_peft_model(tiny_bert(), LoraConfig(r=2, lora_alpha=4, target_modules=["query"], task_type="SEQ_CLS"))
    randomize_adapter(model, seed=8)
    expected = logits(model)
    assert max_diff(expected, logits(tiny_bert())) > 1e-3
    plain = model.merge_and_unload()
    assert_plain(plain, "bert")
    assert max_diff(logits(plain), expected) < 1e-5


@pytest.mark.parametrize("merge_first", [False, True])
def test_unload_gives_back_the_original_base(merge_first):
    model = adapted("bert", modules_to_save=["classifier"])
    original = logits(tiny_bert())
    if merge_first:
        model.merge_adapter()
    base = model.unload()
    assert_plain(base, "bert")
    assert max_diff(logits(base), original) < 1e-6
    if not merge_first:
        assert torch.equal(logits(base), original)


def test_tied_lm_head_merge_is_refused_by_default():
    model = get_peft_model(tiny_llama(tie_word_embeddings=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], init_lora_weights=False))
    inner = model.get_base_model()
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    weights = base_weights(model)
    with pytest.raises(AdapterStateError) as info:
        model.merge_adapter()
    message = str(info.value)
    assert "lm_head" in message and "embed_tokens" in message and "untie_weights=True" in message
    assert model.merged_adapters == []
    assert all(torch.equal(p, weights[n]) for n, p in base_weights(model).items())
    with pytest.raises(AdapterStateError):
        model.merge_and_unload()


def test_tied_lm_head_merge_with_untie_weights():
    model = get_peft_model(tiny_llama(tie_word_embeddings=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], init_lora_weights=False))
    expected = logits(model)
    embedding = model.get_base_model().model.embed_tokens.weight.detach().clone()
    with pytest.warns(UserWarning, match="Untied"):
        model.merge_adapter(untie_weights=True)
    inner = model.get_base_model()
    assert inner.lm_head.weight is not inner.model.embed_tokens.weight
    assert torch.equal(inner.model.embed_tokens.weight, embedding)
    assert max_diff(inner.lm_head.weight, embedding) > 1e-4
    assert max_diff(logits(model), expected) < 1e-5
    plain = model.merge_and_unload()
    assert torch.equal(plain.model.embed_tokens.weight, embedding)
    assert max_diff(logits(plain), expected) < 1e-5


def test_deleting_a_merged_adapter_unmerges_it_first():
    model = adapted()
    model.add_adapter("other", LoraConfig(r=2, target_modules=["k_proj"]))
    model.merge_adapter()
    model.delete_adapter("default")
    assert model.merged_adapters == []
    assert max_diff(logits(model), logits(tiny_llama())) < 1e-6


def test_tied_gpt2_embedding_merge_is_refused():
    """GPT-2 ties wte to lm_head: merging into wte would change the head as well."""
    from helpers import tiny_gpt2

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["wte"], init_lora_weights=False))
    weights = base_weights(model)
    with pytest.raises(AdapterStateError, match="lm_head"):
        model.merge_adapter()
    assert all(torch.equal(p, weights[n]) for n, p in base_weights(model).items())
