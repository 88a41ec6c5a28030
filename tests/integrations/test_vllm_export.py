"""`export --for vllm`: every lossless case converts to a folder that passes vLLM's rules with the
same LoRA tensors and the same outputs; every other case is refused with its reason and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from vllm_helpers import edit, saved_adapter, tensors

from adapterkit import AdapterModel
from adapterkit.cli.main import main
from adapterkit.errors import VllmIncompatibleError
from adapterkit.integrations.vllm.export import export_for_vllm
from adapterkit.integrations.vllm.rules import check_for_vllm
from helpers import logits, max_diff, tiny_llama

Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.1.self_attn.v_proj"


def zero_lora_biases(folder):
    return {f"{k.rsplit('.', 1)[0]}.bias": torch.zeros(v.shape[0]) for k, v in tensors(folder).items() if k.endswith("lora_B.weight")}


# name -> (edit of a saved adapter, the config fields export must set)
LOSSLESS = {
    "bias all, no bias tensor": (lambda f: edit(f, {"bias": "all"}), {"bias": "none"}),
    "bias lora_only, no bias tensor": (lambda f: edit(f, {"bias": "lora_only"}), {"bias": "none"}),
    "lora_bias, all zero": (lambda f: edit(f, {"lora_bias": True}, add=zero_lora_biases(f)), {"lora_bias": False}),
    "lora_bias, no bias tensor": (lambda f: edit(f, {"lora_bias": True}), {"lora_bias": False}),
    "modules_to_save matching nothing": (lambda f: edit(f, {"modules_to_save": ["lm_head"]}), {"modules_to_save": None}),
    "modules_to_save: a head kept, an absent module dropped": (
        lambda f: edit(f, {"modules_to_save": ["score", "embed_tokens"]}), {"modules_to_save": ["score"]}),
    "all of them": (lambda f: edit(f, {"bias": "all", "lora_bias": True, "modules_to_save": ["lm_head"]},
                                  add=zero_lora_biases(f)), {"bias": "none", "lora_bias": False, "modules_to_save": None}),
}
# name -> (edit, words the refusal must contain)
REFUSED = {
    "DoRA": (lambda f: edit(f, {"use_dora": True}, add={f"{Q}.lora_magnitude_vector": torch.ones(16)}), "DoRA"),
    "DoRA without magnitudes": (lambda f: edit(f, {"use_dora": True}), "DoRA"),
    "a trained bias": (lambda f: edit(f, {"bias": "all"}, add={f"{Q}.bias": torch.randn(16)}), "bias"),
    "a non-zero LoRA bias": (lambda f: edit(f, {"lora_bias": True}, add={f"{Q}.lora_B.bias": torch.full((16,), 1e-3)}),
                             "lora_bias"),
    "modules_to_save with weights": (lambda f: edit(f, {"modules_to_save": ["lm_head"]},
                                                    add={"base_model.model.lm_head.weight": torch.randn(64, 16)}),
                                     "modules_to_save"),
    "PiSSA init": (lambda f: edit(f, {"init_lora_weights": "pissa"}), "PiSSA"),
    "OLoRA init": (lambda f: edit(f, {"init_lora_weights": "olora"}), "init_lora_weights"),
    "aLoRA": (lambda f: edit(f, {"alora_invocation_tokens": [3]}), "aLoRA"),
    "layer replication": (lambda f: edit(f, {"layer_replication": [[0, 2]]}), "layer_replication"),
    "a lone lora_A": (lambda f: edit(f, drop=(f"{V}.lora_B.weight",)), "only one of lora_A / lora_B"),
    "no rank": (lambda f: edit(f, {"r": None}), "lacks r"),
    "rank 0": (lambda f: edit(f, {"r": 0}), "positive integer"),
}


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_conversions(tmp_path, case):
    change, expected_fields = LOSSLESS[case]
    source = change(saved_adapter(tmp_path / "src"))
    assert not check_for_vllm(source).ok  # vLLM refuses the original
    exported = export_for_vllm(source, tmp_path / "out")
    assert check_for_vllm(exported.folder, exported.max_lora_rank).ok
    assert exported.changes and exported.max_lora_rank == 8 and exported.rank == 4
    config = json.loads((exported.folder / "adapter_config.json").read_text())
    original = json.loads((source / "adapter_config.json").read_text())
    for field, value in expected_fields.items():
        assert config.get(field) == value, field
    assert {k: v for k, v in config.items() if k not in expected_fields} == \
           {k: v for k, v in original.items() if k not in expected_fields}
    before, after = tensors(source), tensors(exported.folder)
    assert {k: v for k, v in before.items() if k.endswith(".weight")}.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_exported_folder_gives_the_same_outputs(tmp_path):
    source = saved_adapter(tmp_path / "src")
    reference = logits(AdapterModel.from_pretrained(tiny_llama(), source))
    edit(source, {"bias": "all", "lora_bias": True}, add=zero_lora_biases(source))
    exported = export_for_vllm(source, tmp_path / "out")
    assert max_diff(logits(AdapterModel.from_pretrained(tiny_llama(), exported.folder)), reference) == 0.0


def test_legacy_bin_becomes_safetensors(tmp_path):
    source = saved_adapter(tmp_path / "src")
    weights = tensors(source)
    torch.save(weights, source / "adapter_model.bin")
    (source / "adapter_model.safetensors").unlink()
    exported = export_for_vllm(source, tmp_path / "out")
    assert "adapter_model.bin -> adapter_model.safetensors" in exported.changes
    assert all(torch.equal(weights[k], v) for k, v in tensors(exported.folder).items())


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_name_the_reason_and_write_nothing(tmp_path, case):
    change, words = REFUSED[case]
    source = change(saved_adapter(tmp_path / "src"))
    snapshot = {p.name: p.read_bytes() for p in source.iterdir()}
    with pytest.raises(VllmIncompatibleError, match="no lossless conversion exists") as refused:
        export_for_vllm(source, tmp_path / "out")
    assert words in str(refused.value) and "fix: " in str(refused.value)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    assert {p.name: p.read_bytes() for p in source.iterdir()} == snapshot


def test_rank_above_the_servers_setting_is_refused_only_when_given(tmp_path):
    source = saved_adapter(tmp_path / "src", r=24)
    assert export_for_vllm(source, tmp_path / "any").max_lora_rank == 32
    with pytest.raises(VllmIncompatibleError, match="start vLLM with --max-lora-rank 32"):
        export_for_vllm(source, tmp_path / "small", max_lora_rank=16)


def test_export_command(tmp_path, capsys):
    source = edit(saved_adapter(tmp_path / "src"), {"bias": "all"})
    out = tmp_path / "served"
    assert main(["export", "--for", "vllm", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "converted: bias 'all' -> 'none'" in printed and "--max-lora-rank 8 or more" in printed
    assert main(["check", "--for", "vllm", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", "--for", "vllm", str(source), str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    edit(source, {"use_dora": True})
    assert main(["export", "--for", "vllm", str(source), str(tmp_path / "dora")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DoRA" in err and not (tmp_path / "dora").exists()


def test_readme_commands(tmp_path, capsys):
    """The README's vLLM commands, as written, on an adapter trained and saved as `reverse`."""
    from readme_commands import readme_commands, substitute

    check, export = readme_commands("scaling-out:vllm")
    places = {"reverse": str(saved_adapter(tmp_path / "reverse")), "reverse-vllm": str(tmp_path / "reverse-vllm")}
    assert main(substitute(check, places)[1:]) == 0
    assert main(substitute(export, places)[1:]) == 0
    assert check_for_vllm(tmp_path / "reverse-vllm").ok
    assert "ok: vLLM 0.33.0 loads" in capsys.readouterr().out


def test_pissa_adapter_is_refused_until_saved_as_plain_lora(tmp_path):
    """The fix `check` gives for a PiSSA init, followed with adapterkit's own save option, makes it servable."""
    from adapterkit import LoraConfig, get_peft_model
    from helpers import randomize_adapter

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights="pissa"))
    model.save_pretrained(tmp_path / "initial")
    randomize_adapter(model, std=0.01)  # "training"
    model.save_pretrained(tmp_path / "pissa")
    verdict = check_for_vllm(tmp_path / "pissa")
    assert verdict.rules() == {"init_lora_weights"} and "path_initial_model_for_weight_conversion" in str(verdict.findings[0])
    with pytest.raises(VllmIncompatibleError, match="PiSSA"):
        export_for_vllm(tmp_path / "pissa", tmp_path / "out")
    model.save_pretrained(tmp_path / "plain", path_initial_model_for_weight_conversion=tmp_path / "initial")
    verdict = check_for_vllm(tmp_path / "plain", max_lora_rank=8)  # the conversion doubles the rank (PEFT's too)
    assert verdict.ok, [str(f) for f in verdict.findings]
