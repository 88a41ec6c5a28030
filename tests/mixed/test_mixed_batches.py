"""Mixed-adapter batches: one adapter per row, against each row run alone and against PEFT.

Three adapters of different ranks, alphas and rsLoRA are made with PEFT
(init_lora_weights=False, so they are not no-ops), saved, and loaded into both
libraries from the same folders.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from adapterkit import AdapterModel, AdapterStateError, UnknownAdapterError

ADAPTERS = {  # name -> (r, lora_alpha, use_rslora, also adapt the token embedding)
    "a": (4, 8, False, False),
    "b": (8, 4, True, False),
    "c": (2, 16, False, False),
    "d": (4, 8, False, True),
}
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
TOL = 1e-5


def _tiny_llama():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(config)


def _tiny_gpt2():
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return GPT2LMHeadModel(config)


def _build(make_base, targets, embedding, tmp_path_factory):
    """(adapterkit model, PEFT model), both holding adapters a-d loaded from the same folders."""
    torch.manual_seed(0)
    base = make_base().eval()
    root = tmp_path_factory.mktemp("adapters")
    for name, (r, alpha, rslora, with_embedding) in ADAPTERS.items():
        torch.manual_seed(ord(name))
        config = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora,
                                 target_modules=targets + [embedding] * with_embedding,
                                 init_lora_weights=False, fan_in_fan_out=make_base is _tiny_gpt2)
        made = peft.get_peft_model(copy.deepcopy(base), config)
        made.save_pretrained(root / name)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base), root / "a", adapter_name="a")
    ours = AdapterModel.from_pretrained(copy.deepcopy(base), root / "a", adapter_name="a")
    for name in ("b", "c", "d"):
        reference.load_adapter(root / name, adapter_name=name)
        ours.load_adapter(root / name, adapter_name=name)
    return ours.eval(), reference.eval(), base


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def models(request, tmp_path_factory):
    if request.param == "llama":
        return _build(_tiny_llama, LLAMA_TARGETS, "embed_tokens", tmp_path_factory)
    return _build(_tiny_gpt2, GPT2_TARGETS, "wte", tmp_path_factory)


NAMES = ["a", "__base__", "b", "c", "d", "a", "b"]


def _inputs(rows: int, length: int = 7, left_pad: bool = True):
    torch.manual_seed(1)
    input_ids = torch.randint(3, 64, (rows, length))
    attention_mask = torch.ones_like(input_ids)
    if left_pad:  # rows of different lengths, padded on the left
        for row in range(rows):
            pad = row % 3
            input_ids[row, :pad] = 0
            attention_mask[row, :pad] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _alone(model: AdapterModel, name: str, inputs: dict, row: int, **kwargs):
    """Row `row` run by itself with only its adapter active (or none)."""
    one = {k: v[row: row + 1] for k, v in inputs.items()}
    if name == "__base__":
        with model.disable_adapter():
            return model(**one, **kwargs).logits
    model.set_adapter(name)
    return model(**one, **kwargs).logits


@torch.no_grad()
def test_forward_matches_each_row_alone_and_peft(models):
    ours, reference, _ = models
    inputs = _inputs(len(NAMES))
    mixed = ours(**inputs, adapter_names=NAMES).logits
    for row, name in enumerate(NAMES):
        alone = _alone(ours, name, inputs, row)
        mask = inputs["attention_mask"][row].bool()
        assert (mixed[row][mask] - alone[0][mask]).abs().max() <= TOL, (row, name)
    expected = reference(**inputs, adapter_names=NAMES).logits
    assert (mixed - expected).abs().max() <= TOL
    ours.set_adapter("a")


# A batch whose rows all name one adapter (or none) takes the single-adapter path, so the two
# tests below also put the same rows beside one row of another adapter: that batch must go
# through the gathered path, and give the same rows.


@torch.no_grad()
def test_all_rows_one_adapter_equals_set_adapter(models):
    ours, _, _ = models
    inputs = _inputs(4, left_pad=False)
    first3 = {k: v[:3] for k, v in inputs.items()}
    ours.set_adapter("b")
    single = ours(**first3).logits
    ours.set_adapter("c")
    last_alone = ours(**{k: v[3:] for k, v in inputs.items()}).logits
    ours.set_adapter("a")
    uniform = ours(**first3, adapter_names=["b"] * 3).logits
    assert (uniform - single).abs().max() <= TOL
    gathered = ours(**inputs, adapter_names=["b"] * 3 + ["c"]).logits
    assert (gathered[:3] - single).abs().max() <= TOL
    assert (gathered[3:] - last_alone).abs().max() <= TOL


@torch.no_grad()
def test_all_base_rows_equal_base_model(models):
    ours, _, base = models
    inputs = _inputs(4)
    first3 = {k: v[:3] for k, v in inputs.items()}
    plain = base(**first3).logits
    uniform = ours(**first3, adapter_names=["__base__"] * 3).logits
    assert (uniform - plain).abs().max() <= TOL
    gathered = ours(**inputs, adapter_names=["__base__"] * 3 + ["b"]).logits
    for row in range(3):
        mask = inputs["attention_mask"][row].bool()
        assert (gathered[row][mask] - plain[row][mask]).abs().max() <= TOL, row
    # ...and the gathered path did run: the adapter row is that adapter's, not the base's.
    last = _alone(ours, "b", inputs, 3)
    mask = inputs["attention_mask"][3].bool()
    assert (gathered[3][mask] - last[0][mask]).abs().max() <= TOL
    assert (last[0][mask] - base(**{k: v[3:] for k, v in inputs.items()}).logits[0][mask]).abs().max() > 1e-3
    ours.set_adapter("a")


@torch.no_grad()
def test_greedy_generate_with_cache_matches_peft_and_rows_alone(models):
    ours, reference, _ = models
    inputs = _inputs(len(NAMES))
    settings = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    got = ours.generate(**inputs, adapter_names=NAMES, **settings)
    expected = reference.generate(**inputs, adapter_names=NAMES, **settings)
    assert torch.equal(got, expected)
    for row, name in enumerate(NAMES):
        one = {k: v[row: row + 1] for k, v in inputs.items()}
        alone = ours.generate(**one, adapter_names=[name], **settings)
        assert torch.equal(got[row: row + 1], alone), (row, name)


@torch.no_grad()
def test_generate_logits_match_peft(models):
    """Token equality could hide small drifts; compare the step scores too."""
    ours, reference, _ = models
    inputs = _inputs(len(NAMES))
    settings = dict(max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0,
                    output_scores=True, return_dict_in_generate=True)
    got = ours.generate(**inputs, adapter_names=NAMES, **settings)
    expected = reference.generate(**inputs, adapter_names=NAMES, **settings)
    for mine, theirs in zip(got.scores, expected.scores):
        assert (mine - theirs).abs().max() <= TOL


@torch.no_grad()
def test_beam_search_matches_peft(models):
    ours, reference, _ = models
    names = ["c", "a", "__base__", "d"]
    inputs = _inputs(len(names))
    settings = dict(max_new_tokens=5, num_beams=3, do_sample=False, use_cache=True, pad_token_id=0)
    got = ours.generate(**inputs, adapter_names=names, **settings)
    expected = reference.generate(**inputs, adapter_names=names, **settings)
    assert torch.equal(got, expected)
    one = {k: v[1:2] for k, v in inputs.items()}
    assert torch.equal(got[1:2], ours.generate(**one, adapter_names=["a"], **settings))


@torch.no_grad()
def test_unknown_name_is_refused(models):
    ours, _, _ = models
    with pytest.raises(UnknownAdapterError, match="zzz"):
        ours(**_inputs(2), adapter_names=["a", "zzz"])
    assert ours.routing.row_ids is None


@torch.no_grad()
def test_length_mismatch_is_refused(models):
    ours, _, _ = models
    with pytest.raises(ValueError, match="one name per row"):
        ours(**_inputs(3), adapter_names=["a", "b"])
    with pytest.raises(ValueError, match="one name per row"):
        ours.generate(**_inputs(3), adapter_names=["a", "b"], max_new_tokens=2, pad_token_id=0)
    with pytest.raises(TypeError, match="list"):
        ours(**_inputs(1), adapter_names="a")


@torch.no_grad()
def test_merged_adapter_is_refused_and_state_kept(models):
    ours, _, _ = models
    ours.set_adapter("a")
    ours.merge_adapter()
    try:
        with pytest.raises(AdapterStateError, match="unmerge_adapter"):
            ours(**_inputs(2), adapter_names=["a", "b"])
        assert ours.routing.row_ids is None
    finally:
        ours.unmerge_adapter()
    ours(**_inputs(2), adapter_names=["a", "b"])  # works again once unmerged


def test_training_mode_is_refused(models):
    ours, _, _ = models
    ours.train()
    try:
        with pytest.raises(AdapterStateError, match="eval"):
            ours(**_inputs(2), adapter_names=["a", "b"])
    finally:
        ours.eval()


@torch.no_grad()
def test_adapter_added_after_first_mixed_call(models, tmp_path):
    """Row ids handed out later must still find their slots (slot tables grow with ids)."""
    ours, _, base = models
    inputs = _inputs(2, left_pad=False)
    ours(**inputs, adapter_names=["a", "b"])
    ours.save_pretrained(tmp_path, selected_adapters=["c"])
    ours.load_adapter(tmp_path / "c", adapter_name="late")
    try:
        mixed = ours(**inputs, adapter_names=["late", "a"]).logits
        ours.set_adapter("c")
        alone = ours(**{k: v[:1] for k, v in inputs.items()}).logits
        assert (mixed[:1] - alone).abs().max() <= TOL
    finally:
        ours.delete_adapter("late")
        ours.set_adapter("a")
