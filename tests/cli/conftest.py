"""A tiny base model saved as a real transformers folder (helpers.save_tiny_base), so the CLI
can load it like any local base."""

from __future__ import annotations

import json

import pytest

from helpers import save_tiny_base


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def train_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": f"w{i} w{i + 1}", "response": f"w{i + 2}"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
