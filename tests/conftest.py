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
