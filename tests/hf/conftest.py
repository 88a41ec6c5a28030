import pytest

from helpers import tiny_llama_for


@pytest.fixture
def tiny_llama(smol_tokenizer):
    return tiny_llama_for(smol_tokenizer)
