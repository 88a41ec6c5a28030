"""DoRA (use_dora=True) on Linear, Conv1D and Embedding: PEFT 0.21.2 parity both ways (outputs,
gradients, merged weights), save/load under PEFT's keys, merge with an exact inverse, mixed batches."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel as PeftPeftModel
from peft import get_peft_model as peft_get_peft_model
from safetensors.torch import load_file
from tests.helpers import FACTORIES, input_ids, logits, max_diff

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.cli.main import main
from adapterkit.ops.inspect import inspect_adapter

# case -> (architecture, targets): Linear and Conv1D, each with its token embedding.
CASES = {
    "llama": ("llama", ["q_proj", "v_proj", "down_proj", "embed_tokens"]),
    "gpt2": ("gpt2", ["c_attn", "c_proj", "wte"]),  # wte is tied to lm_head: DoRA on the lookup only
    "gpt2-conv1d": ("gpt2", ["c_attn", "c_proj"]),  # merging into the tied wte needs untie_weights
}
BASE_OF = {case: FACTORIES[arch] for case, (arch, _) in CASES.items()}


def dora_kwargs(case: str, **kw) -> dict:
    return dict(r=4, lora_alpha=8, target_modules=CASES[case][1], lora_dropout=0.0, use_dora=True, **kw)


@torch.no_grad()
def perturb(model, seed: int) -> None:
    """Random A and B, and magnitudes moved off their initial norms, so every term matters."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if "lora_magnitude_vector" in name:
            param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
        elif "lora_" in name and param.requires_grad:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ours_to_peft_and_back(arch, tmp_path):
    ours = get_peft_model(BASE_OF[arch](), LoraConfig(**dora_kwargs(arch)))
    assert max_diff(logits(ours), logits(BASE_OF[arch]())) == 0  # a fresh DoRA adapter is a no-op
    perturb(ours, seed=1)
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    magnitudes = [k for k in saved if k.endswith(".lora_magnitude_vector")]
    assert magnitudes and len(magnitudes) * 3 == len(saved)
    summary = inspect_adapter(tmp_path / "ours")
    assert (summary.use_dora, summary.variant, summary.adapted_modules) == (True, "dora", len(magnitudes))
    theirs = PeftPeftModel.from_pretrained(BASE_OF[arch](), tmp_path / "ours")
    assert max_diff(logits(theirs), logits(ours)) <= 1e-5
    assert max_diff(logits(ours), logits(BASE_OF[arch]())) > 1e-2

    peft = peft_get_peft_model(BASE_OF[arch](), PeftLoraConfig(**dora_kwargs(arch)))
    perturb(peft, seed=2)
    peft.save_pretrained(tmp_path / "peft")
    loaded = AdapterModel.from_pretrained(BASE_OF[arch](), tmp_path / "peft")
    assert max_diff(logits(loaded), logits(peft)) <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradients_match_peft(arch, tmp_path):
    ours = get_peft_model(BASE_OF[arch](), LoraConfig(**dora_kwargs(arch)))
    perturb(ours, seed=3)
    ours.save_pretrained(tmp_path / "a")
    theirs = PeftPeftModel.from_pretrained(BASE_OF[arch](), tmp_path / "a", is_trainable=True)
    ids = input_ids(batch=2, length=6)
    grads = []
    for model in (ours, theirs):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        # Both keyed as the base model's own names: <path>.lora_A / lora_B / lora_magnitude_vector.
        grads.append({n.replace(".lora.", ".").replace(".default", "").replace("base_model.model.", ""): p.grad
                      for n, p in model.get_base_model().named_parameters() if p.requires_grad})
    ours_g, theirs_g = grads
    theirs_g = {k.replace("lora_A.weight", "lora_A").replace("lora_B.weight", "lora_B").replace("lora_embedding_", "lora_")
                .replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v for k, v in theirs_g.items()}
    assert set(ours_g) == set(theirs_g)
    assert any("lora_magnitude_vector" in k for k in ours_g)
    for key, grad in ours_g.items():
        assert grad is not None and max_diff(grad, theirs_g[key]) <= 1e-5, key


@pytest.mark.parametrize("arch", ["llama", "gpt2-conv1d"])
def test_merge_matches_peft_and_unmerge_restores_the_base(arch, tmp_path):
    ours = get_peft_model(BASE_OF[arch](), LoraConfig(**dora_kwargs(arch)))
    perturb(ours, seed=4)
    ours.add_adapter("plain", LoraConfig(r=2, lora_alpha=4, target_modules=CASES[arch][1]))
    ours.set_adapter("plain")  # only active adapters train: perturb reaches this one now
    perturb(ours, seed=5)
    ours.set_adapter("default")
    ours.save_pretrained(tmp_path / "a", selected_adapters=["default"])
    base_weights = {n: p.detach().clone() for n, p in ours.get_base_model().named_parameters() if ".lora." not in n}
    expected = logits(ours)
    ours.merge_adapter()
    assert max_diff(logits(ours), expected) <= 1e-5
    theirs = PeftPeftModel.from_pretrained(BASE_OF[arch](), tmp_path / "a")
    theirs.merge_adapter()
    theirs_weights = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                      for n, p in theirs.named_parameters() if "lora_" not in n}
    for name, param in ours.get_base_model().named_parameters():
        if ".lora." not in name:
            assert max_diff(param, theirs_weights[name]) <= 1e-6, name
    # Merge both, then unmerge the first: the DoRA merge is undone exactly, the other stays merged.
    ours.set_adapter(["default", "plain"])
    both = logits(ours)
    ours.merge_adapter(["plain"])
    assert max_diff(logits(ours), both) <= 1e-5
    ours.unmerge_adapter()
    assert ours.merged_adapters == []
    # Unmerging divides by the gain m / ‖W + s·B·A‖ (perturbed magnitudes make some gains small), then
    # subtracts the plain delta merged on top: float32 rounding, a few 1e-6 at most.
    for name, param in ours.get_base_model().named_parameters():
        if name in base_weights:
            assert max_diff(param, base_weights[name]) <= 1e-5, name
    assert max_diff(logits(ours), both) <= 1e-5
    # Plain merged first: DoRA still rescales the base weight alone (as in its forward), then the plain delta adds.
    assert max_diff(both, logits(BASE_OF[arch]())) > 1e-2
    for order in ([["plain", "default"]], [["plain"], ["default"]]):
        for names in order:
            ours.merge_adapter(names)
        assert max_diff(logits(ours), both) <= 1e-5, order
        ours.unmerge_adapter()
        for name, param in ours.get_base_model().named_parameters():
            if name in base_weights:
                assert max_diff(param, base_weights[name]) <= 1e-5, name


def test_merge_and_unload_and_export_give_the_adapter_outputs(tmp_path):
    from adapterkit.ops.merge import export_merged

    ours = get_peft_model(FACTORIES["llama"](), LoraConfig(**dora_kwargs("llama")))
    perturb(ours, seed=6)
    expected = logits(ours)
    export_merged(ours, tmp_path / "merged")
    from transformers import AutoModelForCausalLM
    assert max_diff(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")), expected) <= 1e-5
    assert max_diff(logits(ours.merge_and_unload()), expected) <= 1e-5


def test_mixed_batch_holds_dora_and_plain_rows():
    model = get_peft_model(FACTORIES["llama"](), LoraConfig(**dora_kwargs("llama")))
    model.add_adapter("plain", LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("dora2", LoraConfig(**dora_kwargs("llama")))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif ".lora." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.eval()
    rows = ["default", "plain", "__base__", "dora2", "default"]
    ids = input_ids(batch=len(rows), length=5)
    with torch.no_grad():
        for part in (ids, ids[:, :1]):  # prefill, and the one-token decode path
            mixed = model(input_ids=part, adapter_names=rows).logits
            for row, name in enumerate(rows):
                if name == "__base__":
                    with model.disable_adapter():
                        alone = model(input_ids=part[row:row + 1]).logits
                else:
                    model.set_adapter(name)
                    alone = model(input_ids=part[row:row + 1]).logits
                assert max_diff(mixed[row:row + 1], alone) <= 1e-5, name


def test_inspect_shows_the_variant(tmp_path, capsys):
    for case, config in (("dora", LoraConfig(**dora_kwargs("llama"))),
                         ("lora", LoraConfig(r=2, target_modules=["q_proj"]))):
        get_peft_model(BASE_OF["llama"](), config).save_pretrained(tmp_path / case)
        assert main(["inspect", str(tmp_path / case)]) == 0
        assert f"{case} (use_dora={case == 'dora'})" in capsys.readouterr().out


def test_combining_or_hotswapping_dora_adapters_is_refused(tmp_path):
    from adapterkit.errors import AdapterCombinationError, HotswapError

    model = get_peft_model(FACTORIES["llama"](), LoraConfig(**dora_kwargs("llama")))
    model.add_adapter("plain", LoraConfig(r=4, lora_alpha=8, target_modules=CASES["llama"][1]))
    model.save_pretrained(tmp_path / "all")
    with pytest.raises(AdapterCombinationError, match="DoRA"):
        model.add_weighted_adapter(["default", "plain"], [0.5, 0.5], "mix", combination_type="cat")
    assert "mix" not in model.peft_config
    with pytest.raises(HotswapError, match="DoRA"):
        model.hotswap_adapter(tmp_path / "all", adapter_name="plain")
