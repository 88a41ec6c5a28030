"""add_weighted_adapter against PEFT 0.21.2: the same combined factors and logits, per type.

Both libraries start from the same two (or three) adapter folders. Deterministic types must
match to 1e-5 on every factor and on the logits. DARE draws random masks: PEFT draws them
after injecting the new adapter (whose own init also draws), so the PEFT side is reseeded
right after injection and ours right before the call; both then draw the same masks in the
same order, and the results must be equal too.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel
from peft import get_peft_model as peft_get_peft_model
from peft.tuners.lora.model import LoraModel

from adapterkit import AdapterModel
from helpers import FACTORIES, logits, max_diff

TOL = 1e-5
SEED = 1234

# name -> (architecture, configs of the source adapters, in order)
SETUPS = {
    "llama": ("llama", [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"]),
                        dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "embed_tokens"]),
                        dict(r=4, lora_alpha=4, target_modules=["q_proj", "up_proj"])]),
    "gpt2": ("gpt2", [dict(r=2, lora_alpha=4, target_modules=["c_attn", "wte"]),
                      dict(r=2, lora_alpha=2, target_modules=["c_attn", "c_proj"])]),
    "llama-ranks": ("llama", [dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                              dict(r=6, lora_alpha=3, target_modules=["q_proj", "v_proj"],
                                   rank_pattern={"v_proj": 3})]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each setup's source adapters, trained by nobody but given random weights, saved once."""
    out = {}
    for setup, (arch, configs) in SETUPS.items():
        root = tmp_path_factory.mktemp(setup)
        model = peft_get_peft_model(FACTORIES[arch](), PeftLoraConfig(init_lora_weights=False, **configs[0]),
                                    adapter_name="a0")
        for i, config in enumerate(configs[1:], start=1):
            model.add_adapter(f"a{i}", PeftLoraConfig(init_lora_weights=False, **config))
        randomize_adapter_all(model, seed=5)
        model.save_pretrained(root)
        out[setup] = root
    return out


def randomize_adapter_all(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _names(setup):
    return [f"a{i}" for i in range(len(SETUPS[setup][1]))]


def _peft(setup, folders):
    arch, _ = SETUPS[setup]
    names = _names(setup)
    model = PeftModel.from_pretrained(FACTORIES[arch](), folders[setup] / names[0] if names[0] != "default"
                                      else folders[setup], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folders[setup] / name, adapter_name=name)
    return model.eval()


def _ours(setup, folders):
    arch, _ = SETUPS[setup]
    names = _names(setup)
    model = AdapterModel.from_pretrained(FACTORIES[arch](), folders[setup] / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folders[setup] / name, adapter_name=name)
    return model.eval()


def _peft_factors(model, name):
    out = {}
    for path, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            out[path] = (module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach())
        elif hasattr(module, "lora_embedding_A") and name in module.lora_embedding_A:
            out[path] = (module.lora_embedding_A[name].detach(), module.lora_embedding_B[name].detach())
    return out


def _our_factors(model, name):
    return {path: (lora.lora_A[name].detach(), lora.lora_B[name].detach())
            for path, lora in model._loras().items() if lora.has(name)}


def _peft_combine(model, monkeypatch, *args, **kwargs):
    original = LoraModel.inject_adapter

    def inject_then_reseed(self, *a, **k):
        result = original(self, *a, **k)
        torch.manual_seed(SEED)  # the masks drawn next are the ones we compare
        return result

    with monkeypatch.context() as patch:
        patch.setattr(LoraModel, "inject_adapter", inject_then_reseed)
        model.add_weighted_adapter(*args, **kwargs)


# (setup, adapters, weights, combination_type, extra kwargs)
CASES = [
    ("llama", ["a0", "a1"], [0.7, -0.4], "linear", {}),
    ("llama", ["a0", "a1", "a2"], [1.0, 0.5, 2.0], "cat", {}),
    ("llama", ["a0", "a1", "a2"], [1.0, -0.5, 0.3], "svd", {}),
    ("llama", ["a0", "a1"], [1.0, 0.5], "svd", dict(svd_rank=3, svd_clamp=0.9)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "svd", dict(svd_full_matrices=False)),
    ("llama", ["a0", "a1"], [0.6, 0.9], "ties", dict(density=0.5)),
    ("llama", ["a0", "a1", "a2"], [0.6, 0.9, -0.3], "ties", dict(density=0.3, majority_sign_method="frequency")),
    ("llama", ["a0", "a1"], [1.0, 0.5], "ties_svd", dict(density=0.7)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "magnitude_prune", dict(density=0.4)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "magnitude_prune_svd", dict(density=0.4)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "dare_linear", dict(density=0.5)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "dare_ties", dict(density=0.6)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "dare_linear_svd", dict(density=0.5)),
    ("llama", ["a0", "a1"], [1.0, 0.5], "dare_ties_svd", dict(density=0.5, majority_sign_method="frequency")),
    ("llama", ["a1"], [2.0], "svd", {}),  # one adapter: PEFT turns any type into linear
    ("gpt2", ["a0", "a1"], [1.0, 0.5], "cat", {}),
    ("gpt2", ["a0", "a1"], [1.0, 0.5], "svd", {}),
    ("gpt2", ["a0", "a1"], [0.5, 0.5], "ties", dict(density=0.5)),
    ("gpt2", ["a0", "a1"], [0.5, -1.0], "dare_ties_svd", dict(density=0.5)),
    ("llama-ranks", ["a0", "a1"], [1.0, 0.5], "cat", {}),
    ("llama-ranks", ["a0", "a1"], [1.0, 0.5], "svd", dict(svd_rank=4)),
]


@pytest.mark.parametrize("setup,adapters,weights,combination_type,kwargs", CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_combination_matches_peft(setup, adapters, weights, combination_type, kwargs, folders, monkeypatch):
    reference, ours = _peft(setup, folders), _ours(setup, folders)
    _peft_combine(reference, monkeypatch, adapters, weights, "mix", combination_type=combination_type, **kwargs)
    torch.manual_seed(SEED)
    ours.add_weighted_adapter(adapters, weights, "mix", combination_type=combination_type, **kwargs)

    expected, got = _peft_factors(reference, "mix"), _our_factors(ours, "mix")
    assert got.keys() == expected.keys()
    for path, (A, B) in expected.items():
        assert got[path][0].shape == A.shape and got[path][1].shape == B.shape, path
        assert max_diff(got[path][0], A) <= TOL and max_diff(got[path][1], B) <= TOL, path

    reference.set_adapter("mix")
    ours.set_adapter("mix")
    combined = logits(ours)
    assert max_diff(combined, logits(reference)) <= TOL
    assert max_diff(combined, logits(FACTORIES[SETUPS[setup][0]]())) > 1e-3  # it does something
