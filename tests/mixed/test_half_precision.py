"""In half precision, mixed rows are as accurate as the single-adapter path.

Two measurements, both printed (pytest -s):
- one layer, against the exact result (float64) of the same half-precision weights and
  inputs: only the LoRA arithmetic differs, so the rounding of each path shows directly
  (the mixed path rounds once less: its mean error is ~5% lower, steadily);
- a tiny Llama with three adapters, against the float32 model: what a server sees.
  Past the first layer, rounding noise is amplified chaotically, so the largest single
  error swings by ±30% between seeds for *either* path; the mean error over several
  seeds is the stable figure, and the bound is on it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import LoraConfig, get_peft_model
from adapterkit.core.injection import attach
from adapterkit.core.routing import AdapterRouting, Route
from helpers import randomize_adapter

# Scales 10/12, 16/sqrt(12) and 7/12: none is exact in bfloat16 (10/12 -> 0.832).
LAYER_ADAPTERS = {"a": (12, 10, False), "b": (12, 16, True), "c": (12, 7, False)}
ROWS = ["a", "b", "c"] * 8


def _errors(got: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    diff = (got.double() - exact.double()).abs()
    return diff.max().item(), diff.mean().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 16], ids=["decode", "prefill"])
@torch.no_grad()
def test_one_layer_mixed_rows_round_no_worse_than_one_adapter(dtype, tokens):
    torch.manual_seed(0)
    layer = nn.Linear(192, 256, bias=False)
    routing = AdapterRouting()
    lora = attach(layer, "linear", routing)
    for name, (rank, alpha, rslora) in LAYER_ADAPTERS.items():
        lora.add(name, rank, alpha, 0.0, rslora, init=False)
        lora.lora_B[name].normal_(0, 0.05)  # a delta of the base output's order
    layer.to(dtype)
    assert all(pack.scale.dtype == torch.float32 for pack in lora.packs.values())
    x = torch.randn(len(ROWS), tokens, 192).to(dtype)

    weight = layer.weight.double()
    exact = torch.stack([
        x[i].double() @ weight.T
        + lora.info[n].scale * (x[i].double() @ lora.lora_A[n].double().T @ lora.lora_B[n].double().T)
        for i, n in enumerate(ROWS)])
    with routing.call(Route(row_ids=torch.tensor([routing.ids[n] for n in ROWS]), row_names=frozenset(ROWS))):
        mixed = layer(x)
    single = []
    for i, name in enumerate(ROWS):
        with routing.call(Route(active=(name,))):
            single.append(layer(x[i: i + 1])[0])
    mixed_max, mixed_mean = _errors(mixed, exact)
    single_max, single_mean = _errors(torch.stack(single), exact)
    print(f"\n{dtype} one layer, {tokens} token(s): max |err| mixed {mixed_max:.4g} single {single_max:.4g}; "
          f"mean |err| mixed {mixed_mean:.4g} single {single_mean:.4g}")
    # Over 12 seeds the mean ratio stays within 0.94-0.96 (one rounding fewer); the largest
    # single error is one element's luck, within 0.7-1.11 of the single path's.
    assert mixed_mean <= single_mean
    assert mixed_max <= single_max * 1.2


T_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODEL_ROWS = ["a", "b", "c"] * 4
SEEDS = range(3)


def _tiny_llama_with_adapters(seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=T_ALL),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=8, lora_alpha=4, use_rslora=True, target_modules=T_ALL))
    model.add_adapter("c", LoraConfig(r=12, lora_alpha=10, target_modules=T_ALL))
    randomize_adapter(model, seed=seed, std=0.1)
    return model.eval()


@torch.no_grad()
def _prefill_and_decode(model, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Logits of a prompt and of one decode step after it (the two mixed-path kernels)."""
    prompt = model(input_ids=ids[:, :-1], adapter_names=names, use_cache=True)
    step = model(input_ids=ids[:, -1:], past_key_values=prompt.past_key_values, adapter_names=names)
    return torch.cat([prompt.logits, step.logits], dim=1).float()


def test_tiny_llama_mixed_rows_as_accurate_as_one_adapter_against_float32():
    """bfloat16, what servers run (float16 and PEFT's figures: python -m bench.precision)."""
    dtype = torch.bfloat16
    errors = {"mixed": [], "single": []}
    for seed in SEEDS:
        reference_model = _tiny_llama_with_adapters(seed)
        half = copy.deepcopy(reference_model).to(dtype)
        ids = torch.randint(3, 64, (len(MODEL_ROWS), 12), generator=torch.Generator().manual_seed(seed))
        reference = _prefill_and_decode(reference_model, ids, MODEL_ROWS)
        mixed = _prefill_and_decode(half, ids, MODEL_ROWS)
        single = torch.cat([_prefill_and_decode(half, ids[i: i + 1], [n]) for i, n in enumerate(MODEL_ROWS)])
        errors["mixed"].append((mixed - reference).abs())
        errors["single"].append((single - reference).abs())
    stats = {path: (max(e.max().item() for e in errs), torch.cat([e.flatten() for e in errs]).mean().item())
             for path, errs in errors.items()}
    print(f"\n{dtype} tiny Llama, 3 adapters, {len(SEEDS)} seeds: max |dlogit| mixed {stats['mixed'][0]:.3g} "
          f"single {stats['single'][0]:.3g}; mean |dlogit| mixed {stats['mixed'][1]:.3g} single {stats['single'][1]:.3g}")
    assert stats["mixed"][1] <= stats["single"][1] * 1.1
