import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from adapterkit.hf.embedded import find_gguf


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real tokenizer, read from the embedded GGUF file (~4 s, once)."""
    gguf = find_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture
def tiny_llama(smol_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=0.3,  # big enough embeddings that a tiny model can make confident logits
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def word_examples():
    from adapterkit.training.data import ChatExample

    words = "cat dog sun tree book fish bird car".split()
    return [
        ChatExample.from_prompt(f"{a} {b}", f"{b} {a}", system="Word game.")
        for a in words for b in words if a != b
    ][:24]
