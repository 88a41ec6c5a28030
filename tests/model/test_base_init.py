"""PiSSA, OLoRA and gaussian init against PEFT 0.21.2, and PEFT's convention for saving a PiSSA /
OLoRA adapter as a plain LoRA of the original base (path_initial_model_for_weight_conversion)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel
from peft import get_peft_model as peft_get_peft_model
from torch import nn

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.errors import AdapterStateError, UnsupportedAdapterError, WeightConversionError
from helpers import FACTORIES, logits, max_diff, tiny_llama

TOL = 1e-5

CASES = {  # name -> (architecture, init, LoraConfig kwargs)
    "llama-pissa": ("llama", "pissa", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    "llama-pissa-rslora": ("llama", "pissa", dict(r=4, lora_alpha=3, use_rslora=True, target_modules=["o_proj"],
                                                  rank_pattern={"o_proj": 2})),
    "gpt2-pissa": ("gpt2", "pissa", dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj", "wte"])),
    "llama-olora": ("llama", "olora", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])),
}


def _factors_peft(model):
    return {path: (m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach(),
                   m.base_layer.weight.detach())
            for path, m in model.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def _factors_ours(model):
    return {path: (lora.lora_A["default"].detach(), lora.lora_B["default"].detach(), lora.base.weight.detach())
            for path, lora in model._loras().items() if lora.has("default")}


def _equal_up_to_component_signs(A, B, ref_A, ref_B) -> float:
    """max |Δ| once each rank component (row i of A with column i of B) takes the reference's sign."""
    signs = torch.sign((A * ref_A).sum(dim=1))
    signs[signs == 0] = 1
    return max(max_diff(A * signs[:, None], ref_A), max_diff(B * signs[None, :], ref_B))


@pytest.mark.parametrize("case", sorted(CASES))
def test_init_matches_peft_and_leaves_outputs_unchanged(case):
    arch, init, kwargs = CASES[case]
    base_logits = logits(FACTORIES[arch]())
    ours = get_peft_model(FACTORIES[arch](), LoraConfig(init_lora_weights=init, **kwargs))
    theirs = peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(init_lora_weights=init, **kwargs))
    assert max_diff(logits(ours), base_logits) <= TOL  # W_res + s·B·A = W
    expected, got = _factors_peft(theirs), _factors_ours(ours)
    embeddings = {p for p in got if p.endswith("wte")}
    assert got.keys() - embeddings == expected.keys()
    for path in embeddings:  # embeddings keep the default init in both: their base is untouched
        assert torch.equal(got[path][2], FACTORIES[arch]().get_submodule(path).weight), path
    for path, (A, B, residual) in expected.items():
        ours_residual = got[path][2].T if arch == "gpt2" else got[path][2]
        peft_residual = residual.T if arch == "gpt2" else residual
        assert _equal_up_to_component_signs(got[path][0], got[path][1], A, B) <= TOL, path
        assert max_diff(ours_residual, peft_residual) <= TOL, path
        assert max_diff(got[path][2], FACTORIES[arch]().get_submodule(path).weight) > 1e-3, path  # base changed


def test_olora_on_conv1d_keeps_outputs_unchanged():
    """PEFT's OLoRA decomposes a Conv1D's stored (in, out) weight and fails on GPT-2's c_attn;
    adapterkit decomposes the (out, in) weight like a Linear's."""
    base = logits(FACTORIES["gpt2"]())
    ours = get_peft_model(FACTORIES["gpt2"](), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                          init_lora_weights="olora"))
    assert max_diff(logits(ours), base) <= TOL
    for lora in ours._loras().values():
        A = lora.lora_A["default"]
        assert torch.allclose(torch.triu(A[:, :4]), A[:, :4], atol=1e-6)  # R is upper triangular
        B = lora.lora_B["default"]
        assert torch.allclose(B.T @ B, torch.eye(4), atol=1e-5)  # Q has orthonormal columns


def test_pissa_niter_takes_the_top_singular_subspace():
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(64, 64))
    V, _ = torch.linalg.qr(torch.randn(48, 48))
    spectrum = torch.tensor([2.0 ** -i for i in range(48)])
    model = nn.Sequential(nn.Linear(48, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(U[:, :48] @ torch.diag(spectrum) @ V.T)
    original = model[0].weight.detach().clone()
    x = torch.randn(5, 48)
    expected = model(x)
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["0"],
                                               init_lora_weights="pissa_niter_4"))
    assert max_diff(wrapped(x), expected) <= TOL
    lora = wrapped._loras()["0"]
    delta = lora.delta_weight("default")
    best = U[:, :4] @ torch.diag(spectrum[:4]) @ V[:, :4].T  # the best rank-4 approximation
    assert max_diff(delta, best) <= 1e-3  # randomised, 4 iterations: close to, not exactly, the best
    assert max_diff(model[0].weight + delta, original) <= TOL


def test_gaussian_init_has_peft_distribution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 4))
    wrapped = get_peft_model(model, LoraConfig(r=8, target_modules=["0"], init_lora_weights="gaussian"))
    lora = wrapped._loras()["0"]
    A, B = lora.lora_A["default"].detach(), lora.lora_B["default"].detach()
    assert bool((B == 0).all())
    assert abs(A.mean().item()) < 0.005
    assert abs(A.std().item() - 1 / 8) < 0.004  # 16,384 draws: the std of the estimate is ~0.0007
    assert abs((A.abs() < 1 / 8).float().mean().item() - 0.6827) < 0.02  # normal: 68% within 1σ
    peft_A = peft_get_peft_model(nn.Sequential(nn.Linear(2048, 4)), PeftLoraConfig(
        r=8, target_modules=["0"], init_lora_weights="gaussian")).base_model.model[0].lora_A["default"].weight
    assert abs(peft_A.std().item() - A.std().item()) < 0.005


@pytest.mark.parametrize("init, use_dora", [("pissa", False), ("olora", False), ("pissa", True)])
def test_saved_as_plain_lora_of_the_original_base(init, use_dora, tmp_path):
    # DoRA: its magnitude is kept as it is (V = W_res + s·B·A is the same matrix after conversion).
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=use_dora)
    model = get_peft_model(tiny_llama(), LoraConfig(init_lora_weights=init, **kwargs))
    model.save_pretrained(tmp_path / "initial")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # "training": every trainable tensor moves
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    trained = logits(model)
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "initial")
    config = LoraConfig.from_json_file(str(tmp_path / "lora" / "adapter_config.json"))
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (8, 16, True)

    # The converted adapter needs the original base: no residual, loads like any LoRA.
    ours = AdapterModel.from_pretrained(tiny_llama(), tmp_path / "lora")
    assert max_diff(logits(ours), trained) <= TOL
    theirs = PeftModel.from_pretrained(tiny_llama(), tmp_path / "lora").eval()
    assert max_diff(logits(theirs), trained) <= TOL
    # Without conversion the folder keeps init_lora_weights=init; loading it recomputes the
    # residual from the base, in both libraries.
    model.save_pretrained(tmp_path / "as_is")
    assert max_diff(logits(AdapterModel.from_pretrained(tiny_llama(), tmp_path / "as_is")), trained) <= TOL
    assert max_diff(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path / "as_is").eval()), trained) <= TOL


def test_peft_converted_folder_matches_ours_in_layout(tmp_path):
    """PEFT's own conversion of the same init writes the same keys, shapes and config."""
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    theirs = peft_get_peft_model(tiny_llama(), PeftLoraConfig(init_lora_weights="pissa", **kwargs))
    theirs.peft_config["default"].init_lora_weights = True
    theirs.save_pretrained(tmp_path / "peft_initial")
    theirs.peft_config["default"].init_lora_weights = "pissa"
    theirs.save_pretrained(tmp_path / "peft_lora", path_initial_model_for_weight_conversion=tmp_path / "peft_initial")
    ours = get_peft_model(tiny_llama(), LoraConfig(init_lora_weights="pissa", **kwargs))
    ours.save_pretrained(tmp_path / "initial")
    ours.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "initial")
    from safetensors.torch import load_file

    peft_tensors = load_file(tmp_path / "peft_lora" / "adapter_model.safetensors")
    our_tensors = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in peft_tensors.items()} == {k: v.shape for k, v in our_tensors.items()}
    # Untrained: the converted adapter is zero in effect, in both.
    assert max_diff(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft_lora")), logits(tiny_llama())) <= TOL
    assert max_diff(logits(AdapterModel.from_pretrained(tiny_llama(), tmp_path / "lora")), logits(tiny_llama())) <= TOL
    ours_config = LoraConfig.from_json_file(str(tmp_path / "lora" / "adapter_config.json"))
    peft_config = PeftLoraConfig.from_pretrained(str(tmp_path / "peft_lora"))
    assert (ours_config.r, ours_config.lora_alpha) == (peft_config.r, peft_config.lora_alpha)


def test_bad_init_values_and_bad_conversions_are_refused(tmp_path):
    for value in ("pissa_niter_0", "pissa_niter_x", "pissa_niter_", "PISSA", "olora2", "loftq", "corda", "", None, 2.0):
        with pytest.raises(UnsupportedAdapterError):
            LoraConfig(init_lora_weights=value)
    tied = tiny_llama(tie_word_embeddings=True)
    model = AdapterModel(tied)
    before = {k: v.clone() for k, v in tied.state_dict().items()}
    with pytest.raises(AdapterStateError, match="tied"):
        model.add_adapter("p", LoraConfig(r=2, target_modules=["lm_head", "q_proj"], init_lora_weights="pissa"))
    assert "p" not in model.peft_config and all(torch.equal(v, before[k]) for k, v in tied.state_dict().items())

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    other = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="pissa"))
    other.save_pretrained(tmp_path / "wrong_rank")
    with pytest.raises(WeightConversionError, match="initial"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "wrong_rank")
    assert not (tmp_path / "out").exists()
