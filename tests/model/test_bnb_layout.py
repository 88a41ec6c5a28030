"""bitsandbytes' CPU repacking of 4-bit weights (core/bnb_layout.py): a repacked layer dequantizes to
its own weight without being changed, and a base adapterkit wraps is put back in the trainable layout.

bitsandbytes repacks a Linear4bit at its first no-grad eval forward on CPUs with AVX512-BF16; the
tests call its repacking function directly, so they check the same thing on any CPU.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers import VOCAB, input_ids
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import LoraConfig, get_peft_model
from adapterkit.core.bnb_layout import is_cpu_repacked, keep_standard_4bit_layout
from adapterkit.core.kinds import dequantized_weight

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install adapterkit[quant])")
from bitsandbytes.functional import _convert_weight_packed_for_cpu as repack  # noqa: E402

SCHEMES = ["nf4", "fp4", "nf4+dq", "fp4+dq"]


def quantized_linear(scheme: str, seed: int, out_features: int = 96, in_features: int = 128) -> nn.Module:
    torch.manual_seed(seed)
    quant_type, _, dq = scheme.partition("+")
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32,
                              quant_type=quant_type, compress_statistics=bool(dq))
    layer.weight = bnb.nn.Params4bit(torch.randn(out_features, in_features), requires_grad=False,
                                     quant_type=quant_type, compress_statistics=bool(dq))
    return layer.to("cpu")  # quantizes


def repack_in_place(layer: nn.Module) -> None:
    """What bitsandbytes' Linear4bit.forward does at the first no-grad eval call on an AVX512-BF16 CPU."""
    layer.weight.data, layer.weight.quant_state = repack(layer.weight.data, layer.weight.quant_state)


def quantized_llama(scheme: str, bf16_absmax: bool = False) -> nn.Module:
    """A tiny Llama (seed 0) with every Linear but lm_head a bitsandbytes 4-bit layer, left with
    bitsandbytes' defaults. `bf16_absmax` rounds the statistics as repacking does."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            quant_type, _, dq = scheme.partition("+")
            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False,
                                      compute_dtype=torch.float32, quant_type=quant_type, compress_statistics=bool(dq))
            layer.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False,
                                             quant_type=quant_type, compress_statistics=bool(dq))
            layer = layer.to("cpu")
            if bf16_absmax:
                layer.weight.quant_state.absmax = layer.weight.quant_state.absmax.bfloat16().float()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    return model.eval()


def four_bit_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def lora_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:  # B starts at zero; a nonzero B lets every factor get a gradient
            torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    wrapped.train()
    ids = input_ids(batch=2, length=9)
    wrapped(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in wrapped.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("seed", range(2))
def test_a_repacked_weight_dequantizes_to_its_weight_and_the_layer_is_left_alone(scheme, seed):
    layer = quantized_linear(scheme, seed)
    before = dequantized_weight(layer)
    repack_in_place(layer)
    data, address, state = layer.weight.data.clone(), layer.weight.data_ptr(), layer.weight.quant_state
    absmax = state.absmax.clone()

    after = dequantized_weight(layer)

    # Repacking rounds absmax to bfloat16 (a relative 2^-9); blocks mixed up would be off by the weights' size.
    assert (after - before).abs().max() <= 2 ** -8 * before.abs().max()
    assert layer.weight.data_ptr() == address and layer.weight.quant_state is state  # not swapped...
    assert torch.equal(layer.weight.data, data)
    assert is_cpu_repacked(state) and torch.equal(state.absmax, absmax)  # ...nor changed in place


def test_wrapping_a_repacked_base_restores_it_exactly_and_gradients_flow_as_on_a_fresh_one(scheme="nf4"):
    # The reference: the same base never repacked, with its statistics rounded to bfloat16 as repacking does.
    expected = lora_gradients(quantized_llama(scheme, bf16_absmax=True))
    repacked = quantized_llama(scheme)
    for layer in four_bit_layers(repacked):
        repack_in_place(layer)

    got = lora_gradients(repacked)

    assert all(not is_cpu_repacked(m.weight.quant_state) and m.support_avx512bf16_for_cpu is False
               for m in four_bit_layers(repacked))
    assert set(got) == set(expected) and len(got) == 2 * 3 * 2  # A and B, 3 targets, 2 layers
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_double_quantized_layers_are_restored_to_their_weights():
    model = quantized_llama("nf4+dq")
    before = {id(m): dequantized_weight(m) for m in four_bit_layers(model)}
    for layer in four_bit_layers(model):
        repack_in_place(layer)

    assert keep_standard_4bit_layout(model) == len(before) == 14  # 7 Linear layers in each of 2 blocks

    for layer in four_bit_layers(model):
        assert not is_cpu_repacked(layer.weight.quant_state) and layer.weight.quant_state.nested
        assert layer.quant_state in (None, layer.weight.quant_state)  # bitsandbytes' second reference, if any
        weight = before[id(layer)]
        assert (dequantized_weight(layer) - weight).abs().max() <= 2 ** -7 * weight.abs().max()
    assert keep_standard_4bit_layout(model) == 0  # nothing left to restore


def test_a_wrapped_base_stays_in_the_trainable_layout_after_an_evaluation():
    model = get_peft_model(quantized_llama("nf4"), LoraConfig(r=4, target_modules=["q_proj"]))
    model.eval()
    with torch.no_grad():  # bitsandbytes would repack here on an AVX512-BF16 CPU
        model(input_ids=input_ids())
    assert not any(is_cpu_repacked(m.weight.quant_state) for m in four_bit_layers(model))
