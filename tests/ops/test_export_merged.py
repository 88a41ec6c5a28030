"""export_merged: a plain transformers folder with the adapter folded in, live model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapterkit import LoraConfig, UnknownAdapterError, get_peft_model
from adapterkit.ops.merge import export_merged
from helpers import logits, max_diff, randomize_adapter, tiny_llama


def _trained(targets, tie=False):
    model = get_peft_model(tiny_llama(tie_word_embeddings=tie), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    randomize_adapter(model)
    return model.eval()


def test_export_loads_with_transformers_alone_and_leaves_the_live_model_bit_identical(tmp_path):
    model = _trained("all-linear")
    before = logits(model)
    weights_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    out = export_merged(model, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert max_diff(logits(plain), before) < 1e-5
    assert not any("lora" in name for name in plain.state_dict())
    # No merge/unmerge round trip happened on the live model: not even rounding residue.
    assert all(torch.equal(v, weights_before[k]) for k, v in model.get_base_model().state_dict().items())
    assert max_diff(logits(model), before) == 0.0


def test_export_of_an_adapted_tied_lm_head_keeps_the_input_embedding(tmp_path):
    model = _trained(["lm_head", "q_proj"], tie=True)
    before = logits(model)
    embedding = model.get_base_model().get_input_embeddings().weight.detach().clone()
    out = export_merged(model, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert max_diff(logits(plain), before) < 1e-5
    assert torch.equal(plain.get_input_embeddings().weight, embedding)


def test_export_replaces_an_existing_folder_whole(tmp_path):
    model = _trained(["q_proj"])
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    export_merged(model, out)
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _misspellings(name: str) -> list[str]:
    """A family of near-misses: each letter dropped, doubled, or upper-cased; a suffix; a space."""
    near = {name[:i] + name[i + 1:] for i in range(len(name))}
    near |= {name[:i] + name[i] * 2 + name[i:] for i in range(len(name))}
    near |= {name[:i] + name[i].upper() + name[i + 1:] for i in range(len(name))}
    near |= {name + "_v2", " " + name, name + " ", name.upper()}
    return sorted(near - {name})


def test_export_refuses_a_misspelt_adapter_name_and_writes_nothing(tmp_path):
    model = _trained(["q_proj"])  # one adapter, "default"
    model.add_adapter("shout", LoraConfig(r=2, target_modules=["v_proj"]))
    families = _misspellings("default") + _misspellings("shout")
    assert len(families) > 30
    for wrong in families:
        for names in ([wrong], ["default", wrong], wrong):
            with pytest.raises(UnknownAdapterError) as caught:
                export_merged(model, tmp_path / "merged", adapter_names=names)
            message = str(caught.value)
            assert repr(wrong) in message and "'default'" in message and "'shout'" in message, message
    assert list(tmp_path.iterdir()) == []  # not even the staging folder


def test_export_with_nothing_active_and_no_names_is_refused(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.routing.active = ()
    with pytest.raises(UnknownAdapterError, match="adapter_names"):
        export_merged(model, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
