"""The in-memory <-> on-disk key mapping is one pure, invertible function."""

import pytest

from adapterkit.io import keys


@pytest.mark.parametrize("module, kind, factor, key", [
    ("model.layers.0.self_attn.q_proj", "linear", "A", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
    ("transformer.h.1.attn.c_attn", "conv1d", "B", "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"),
    ("model.embed_tokens", "embedding", "A", "base_model.model.model.embed_tokens.lora_embedding_A"),
    ("model.embed_tokens", "embedding", "B", "base_model.model.model.embed_tokens.lora_embedding_B"),
])
def test_factor_keys_round_trip(module, kind, factor, key):
    assert keys.factor_key(module, kind, factor) == key
    assert keys.parse_key(key, set()) == keys.TensorDestination(factor, module)


def test_saved_bias_and_base_weight_keys_round_trip():
    saved = keys.saved_key("classifier", "weight")
    assert saved == "base_model.model.classifier.weight"
    assert keys.parse_key(saved, {"classifier"}) == keys.TensorDestination("saved", "classifier", "weight")
    assert keys.parse_key("base_model.model.classifier.bias", {"classifier"}) == keys.TensorDestination("saved", "classifier", "bias")
    wrapped = keys.bias_key("a.q", lora_wrapped=True)
    assert wrapped == "base_model.model.a.q.base_layer.bias"
    assert keys.parse_key(wrapped, set()) == keys.TensorDestination("bias", "a.q")
    plain = keys.bias_key("a.norm", lora_wrapped=False)
    assert keys.parse_key(plain, set()) == keys.TensorDestination("bias", "a.norm")
    assert keys.parse_key("base_model.model.emb.base_layer.weight", set()) == keys.TensorDestination("base_weight", "emb")


def test_foreign_keys_have_no_meaning():
    assert keys.parse_key("model.layers.0.weight", set()) is None
    assert keys.parse_key("base_model.model.layers.0.weight", set()) is None
