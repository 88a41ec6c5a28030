"""LoRA on bitsandbytes-quantized bases (QLoRA): forward, training, save/load, merge refusal,
dequantize -> merge, moving adapters between the quantized and float bases; PEFT 0.21.2 is the oracle.

The quantized bases are the tiny seeded Llama with its Linear layers swapped for bitsandbytes
Linear4bit (nf4 / fp4, with and without double quantization) or Linear8bitLt, as user code
would; transformers' BitsAndBytesConfig path is covered by tests/hf (load_base quantization).
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers import VOCAB, input_ids, logits, max_diff, randomize_adapter
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.core.kinds import QUANTIZED_LINEAR, dequantized_weight, kind_of, quantization_of
from adapterkit.errors import BaseModelMismatchError, QuantizedMergeError

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install adapterkit[quant])")

SCHEMES = ["nf4", "fp4", "nf4+dq", "int8"]
TARGETS = ["q_proj", "v_proj", "down_proj"]


def quantize_linears(model: nn.Module, scheme: str, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Swap every nn.Linear (but `skip`) for the bitsandbytes layer of `scheme`, in place."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.split(".")[-1] in skip:
            continue
        has_bias = module.bias is not None
        if scheme == "int8":
            layer = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=has_bias,
                                        has_fp16_weights=False)
            layer.load_state_dict(module.state_dict())
        else:
            quant_type, _, dq = scheme.partition("+")
            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=has_bias,
                                      compute_dtype=torch.float32, quant_type=quant_type,
                                      compress_statistics=bool(dq))
            layer.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False,
                                             quant_type=quant_type, compress_statistics=bool(dq))
            if has_bias:
                layer.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        layer = layer.to("cpu")  # quantizes the weight
        # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at the first eval forward
        # and then multiplies in bfloat16; the float path computes x @ dequantized(W) exactly, so
        # parity and merge checks compare LoRA, not two kernels' rounding.
        layer.support_avx512bf16_for_cpu = False
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model.eval()  # new layers start in training mode; bitsandbytes' CPU kernel differs by mode


def float_llama(seed: int = 0) -> nn.Module:
    """A tiny Llama whose Linear sizes suit bitsandbytes' CPU kernels (multiples of 32)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def quantized_llama(scheme: str, seed: int = 0) -> nn.Module:
    return quantize_linears(float_llama(seed), scheme)


def model_without_adapters(quantized: nn.Module) -> nn.Module:
    """The float model a dequantize-merge with no adapter gives."""
    return get_peft_model(quantized, config()).merge_and_unload(dequantize=True, adapter_names=[])


def config(**kw) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, **kw)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_layers_are_recognised_by_type(scheme):
    model = quantized_llama(scheme)
    q = model.model.layers[0].self_attn.q_proj
    assert kind_of(q) is QUANTIZED_LINEAR
    assert quantization_of(q) == scheme
    assert kind_of(model.lm_head).name == "linear"

    class MyLinear4bit(bnb.nn.Linear4bit):  # a user's subclass is still recognised
        pass
    assert kind_of(MyLinear4bit(8, 8)) is QUANTIZED_LINEAR


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_matches_peft_on_the_same_quantized_layers(scheme, tmp_path):
    from peft import PeftModel as PeftPeftModel
    from peft import get_peft_model as peft_get_peft_model

    ours = get_peft_model(quantized_llama(scheme), config())
    randomize_adapter(ours)
    before = logits(ours)
    with ours.disable_adapter():
        base_out = logits(ours)
    assert max_diff(before, base_out) > 1e-2  # the adapter does something
    ours.save_pretrained(tmp_path / "a")

    theirs_base = quantized_llama(scheme)
    theirs_base.is_loaded_in_4bit = scheme != "int8"
    theirs_base.is_loaded_in_8bit = scheme == "int8"
    theirs = PeftPeftModel.from_pretrained(theirs_base, tmp_path / "a")
    assert max_diff(logits(theirs), before) <= 1e-5

    # And back: PEFT's own adapter on its bnb LoRA layers, loaded by us.
    base2 = quantized_llama(scheme)
    base2.is_loaded_in_4bit, base2.is_loaded_in_8bit = scheme != "int8", scheme == "int8"
    from peft import LoraConfig as PeftLoraConfig
    peft_model = peft_get_peft_model(base2, PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
    randomize_adapter(peft_model, seed=5)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "p")
    loaded = AdapterModel.from_pretrained(quantized_llama(scheme), tmp_path / "p")
    assert max_diff(logits(loaded), expected) <= 1e-5


@pytest.mark.parametrize(("scheme", "checkpointing"), [("nf4", None), ("int8", {"use_reentrant": False})])
def test_training_updates_only_lora_weights_with_gradient_checkpointing(scheme, checkpointing):
    model = get_peft_model(quantized_llama(scheme), config())
    base = model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)  # None: transformers' default
    base.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = input_ids(batch=4, length=8)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert set(grads) <= trainable and grads
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in base.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_merge_is_refused_and_outputs_stay(scheme, tmp_path):
    model = get_peft_model(quantized_llama(scheme), config())
    randomize_adapter(model)
    before = logits(model)
    for call in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(QuantizedMergeError, match="dequantize=True"):
            call()
        assert model.merged_adapters == []
        assert max_diff(logits(model), before) == 0
    from adapterkit.ops.merge import export_merged
    with pytest.raises(QuantizedMergeError):
        export_merged(model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("scheme", ["nf4", "fp4+dq", "int8"])
def test_merge_and_unload_dequantize_gives_a_float_model_with_the_same_outputs(scheme, tmp_path):
    model = get_peft_model(quantized_llama(scheme), config())
    randomize_adapter(model)
    before = logits(model)
    base = model.get_base_model()
    expected = {path: dequantized_weight(lora.base) + lora.delta_weight("default")
                for path, lora in model._loras().items()}
    with model.disable_adapter():
        quantized_base = logits(model)
    merged = model.merge_and_unload(dequantize=True)
    assert merged is base
    assert not any(kind_of(m) is QUANTIZED_LINEAR for m in merged.modules())
    assert not any(".lora" in n for n, _ in merged.named_parameters())
    for path, weight in expected.items():
        assert max_diff(merged.get_submodule(path).weight, weight) == 0, path
    if scheme == "int8":
        # LLM.int8() also rounds the activations to int8, so the float model differs from the
        # quantized one by that rounding, adapter or not.
        no_adapter = quantized_llama(scheme)
        activation_rounding = max_diff(logits(model_without_adapters(no_adapter)), quantized_base)
        assert max_diff(logits(merged), before) <= 4 * activation_rounding
    else:  # 4-bit layers compute x @ dequantized(W): the float model is the same function
        assert max_diff(logits(merged), before) <= 1e-5
    merged.save_pretrained(tmp_path / "float")  # a float model: no quantization config left
    reloaded = type(merged).from_pretrained(tmp_path / "float")
    assert not any(kind_of(m) is QUANTIZED_LINEAR for m in reloaded.modules())
    assert max_diff(logits(reloaded), logits(merged)) == 0


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_adapters_move_between_quantized_and_float_bases(scheme, tmp_path):
    q = get_peft_model(quantized_llama(scheme), config())
    randomize_adapter(q)
    q.save_pretrained(tmp_path / "from_q")
    f = get_peft_model(float_llama(), config())
    randomize_adapter(f, seed=9)
    f.save_pretrained(tmp_path / "from_f")

    # strict_base passes: the fingerprint knows these are one base, and the warning names both.
    with pytest.warns(UserWarning, match=f"quantized {scheme}.*the same base, quantized differently"):
        onto_float = AdapterModel.from_pretrained(float_llama(), tmp_path / "from_q", strict_base=True)
    with pytest.warns(UserWarning, match=f"this model is .*quantized {scheme}.*the same base"):
        onto_quant = AdapterModel.from_pretrained(quantized_llama(scheme), tmp_path / "from_f", strict_base=True)
    # A different base quantized is still a different base.
    with pytest.raises(BaseModelMismatchError):
        AdapterModel.from_pretrained(quantized_llama(scheme, seed=1), tmp_path / "from_f", strict_base=True)
    for moved, source in ((onto_float, q), (onto_quant, f)):
        for name, param in source.named_parameters():
            if ".lora." in name:
                assert torch.equal(moved.get_parameter(name), param), name
    # The outputs differ only by the base's quantization error.
    with onto_float.disable_adapter(), q.disable_adapter():
        quantization_error = max_diff(logits(onto_float), logits(q))
    assert max_diff(logits(onto_float), logits(q)) <= 4 * quantization_error + 1e-5


def test_fingerprint_names_the_quantized_base_and_matches_its_float_base():
    from adapterkit.io.fingerprint import base_fingerprint

    float_fp = base_fingerprint(float_llama())
    nf4_fp = base_fingerprint(quantized_llama("nf4"))
    other_fp = base_fingerprint(quantize_linears(float_llama(seed=1), "nf4"))
    assert nf4_fp.quantization == "nf4" and float_fp.quantization == ""
    assert "quantized nf4" in nf4_fp.describe()
    assert nf4_fp.shapes_sha256 == float_fp.shapes_sha256
    assert float_fp.matches(nf4_fp) and nf4_fp.matches(float_fp)
    assert not other_fp.matches(float_fp) and not float_fp.matches(other_fp)


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_mixed_batch_rows_equal_each_adapter_alone(scheme):
    model = get_peft_model(quantized_llama(scheme), config())
    model.add_adapter("b", LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.eval()
    ids = input_ids(batch=3, length=5)
    rows = ["default", "b", "__base__"]
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=rows).logits
        for row, name in enumerate(rows):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=ids[row:row + 1]).logits
            else:
                model.set_adapter(name)
                alone = model(input_ids=ids[row:row + 1]).logits
            assert max_diff(mixed[row:row + 1], alone) <= 1e-5, name
        one_token = model(input_ids=ids[:, :1], adapter_names=rows).logits  # the decode path
        model.set_adapter("b")
        assert max_diff(one_token[1:2], model(input_ids=ids[1:2, :1]).logits) <= 1e-5


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_dora_on_quantized_layers_matches_peft_and_merges_when_dequantized(scheme, tmp_path):
    from peft import PeftModel as PeftPeftModel

    ours = get_peft_model(quantized_llama(scheme), config(use_dora=True))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif ".lora." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    before = logits(ours)
    ours.save_pretrained(tmp_path / "a")
    theirs_base = quantized_llama(scheme)
    theirs_base.is_loaded_in_4bit, theirs_base.is_loaded_in_8bit = scheme != "int8", scheme == "int8"
    theirs = PeftPeftModel.from_pretrained(theirs_base, tmp_path / "a")
    assert max_diff(logits(theirs), before) <= 1e-5
    expected = {path: lora.merged_weight(dequantized_weight(lora.base), ["default"])
                for path, lora in ours._loras().items()}
    merged = ours.merge_and_unload(dequantize=True)
    for path, weight in expected.items():
        assert max_diff(merged.get_submodule(path).weight, weight) == 0, path
    if scheme != "int8":
        assert max_diff(logits(merged), before) <= 1e-5
