import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py, for every test package

torch.set_num_threads(2)


@pytest.fixture
def gpt2():
    from helpers import tiny_gpt2

    return tiny_gpt2()


@pytest.fixture
def llama():
    from helpers import tiny_llama

    return tiny_llama()


@pytest.fixture
def bert():
    from helpers import tiny_bert

    return tiny_bert()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real tokenizer, read from the embedded GGUF file (~4 s, once per session)."""
    from transformers import AutoTokenizer

    from adapterkit.hf.embedded import find_gguf

    gguf = find_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
