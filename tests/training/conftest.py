import pytest

from helpers import tiny_llama_for


@pytest.fixture
def tiny_llama(smol_tokenizer):
    # Embeddings big enough that a tiny model can make confident logits.
    return tiny_llama_for(smol_tokenizer, initializer_range=0.3)


@pytest.fixture
def word_examples():
    from adapterkit.training.data import ChatExample

    words = "cat dog sun tree book fish bird car".split()
    return [
        ChatExample.from_prompt(f"{a} {b}", f"{b} {a}", system="Word game.")
        for a in words for b in words if a != b
    ][:24]
