"""load_base(..., quantization=...): transformers' BitsAndBytesConfig path, and adapters on it."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.core.bnb_layout import is_cpu_repacked
from adapterkit.core.kinds import QUANTIZED_LINEAR, kind_of, quantization_of
from adapterkit.hf import load_base
from adapterkit.hf.base_models import QUANTIZATIONS
from adapterkit.hf.errors import QuantizationUnavailableError
from helpers import max_diff, randomize_adapter

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install adapterkit[quant])")


@pytest.fixture
def float_folder(tmp_path, smol_tokenizer):
    # Linear sizes are multiples of 32, as bitsandbytes' CPU kernels need.
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "base")
    smol_tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("scheme", ["nf4", "fp4+dq", "int8"])
def test_load_base_quantizes_the_linears_and_adapters_move_to_the_float_base(scheme, float_folder, tmp_path):
    model, tokenizer = load_base(float_folder, quantization=scheme)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert kind_of(q_proj) is QUANTIZED_LINEAR and quantization_of(q_proj) == scheme
    assert not any(p.requires_grad for p in model.parameters() if p.dtype in (torch.uint8, torch.int8))
    ids = tokenizer("a quantized base", return_tensors="pt").input_ids
    with torch.no_grad():  # an evaluation: bitsandbytes would repack 4-bit weights for its CPU kernel here
        model(input_ids=ids)
    assert not any(is_cpu_repacked(getattr(getattr(m, "weight", None), "quant_state", None)) for m in model.modules())

    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(peft)
    peft.save_pretrained(tmp_path / "qlora")
    float_model, _ = load_base(float_folder)
    with pytest.warns(UserWarning, match=re.escape(f"quantized {scheme},")):
        moved = AdapterModel.from_pretrained(float_model, tmp_path / "qlora", strict_base=True)
    with torch.no_grad():
        on_float, on_quant = moved(input_ids=ids).logits, peft(input_ids=ids).logits
        with moved.disable_adapter(), peft.disable_adapter():
            base_gap = max_diff(moved(input_ids=ids).logits, peft(input_ids=ids).logits)
    assert max_diff(on_float, on_quant) <= 4 * base_gap + 1e-4  # the quantization error, no more


@pytest.mark.parametrize("bad", ["nf3", "NF4", "int4", "", "8bit"])
def test_unknown_quantization_is_refused_before_loading(bad, tmp_path):
    assert bad not in QUANTIZATIONS
    with pytest.raises(QuantizationUnavailableError, match="is not one of"):
        load_base(tmp_path / "never-read", quantization=bad)
