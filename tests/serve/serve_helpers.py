"""Helpers for the server tests: a tiny Llama saved as a real transformers folder (word-level
tokenizer and chat template, as tests/cli uses), random adapters saved as PEFT folders, a real
uvicorn server on 127.0.0.1 in a thread, and the oracle: each request run alone in-process."""

from __future__ import annotations

import contextlib

import torch

from adapterkit import AdapterModel
from adapterkit.serve.background import BackgroundServer
from helpers import (  # noqa: F401 (re-exported)
    free_port,
    randomize_adapter,
    save_random_adapters,
    save_tiny_base,
    tiny_llama,
    tiny_tokenizer,
)

MAX_MODEL_LEN = 32
API_KEY = "test-key"


class ServerThread(BackgroundServer):
    """A real uvicorn server on 127.0.0.1 in a background thread, with the app's ServerState at hand.
    `port`: a given one (a server taking over a stopped one's address), or 0 for any free one."""

    @property
    def state(self):
        return self.app.state.server


@contextlib.contextmanager
def serving(base_dir, adapters=None, **options):
    """build_app on the tiny base, served for the duration of the block."""
    from adapterkit.hf import load_base
    from adapterkit.serve import ServeConfig, build_app

    model, tokenizer = load_base(base_dir)
    options.setdefault("max_model_len", MAX_MODEL_LEN)
    store = options.pop("store", None)
    config = ServeConfig(base_name="tiny", adapters=dict(adapters or {}), **options)
    with ServerThread(build_app(model, tokenizer, config, store=store)) as server:
        yield server


class Reference:
    """Each request run alone, in this process, with plain generate (the oracle)."""

    def __init__(self, base_dir, adapter_dirs) -> None:
        from adapterkit.hf import load_base

        base, self.tokenizer = load_base(base_dir)
        self.model = AdapterModel(base)
        for name, folder in adapter_dirs.items():
            self.model.load_adapter(folder, adapter_name=name)
        self.model.eval()

    @torch.no_grad()
    def complete(self, adapter: str | None, prompt_ids: list[int], max_tokens: int) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of a greedy completion."""
        ids = torch.tensor([prompt_ids])
        context = self.model.disable_adapter() if adapter is None else contextlib.nullcontext()
        if adapter is not None:
            self.model.set_adapter(adapter)
        with context:
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, eos_token_id=1, pad_token_id=0)
        new = out[0, len(prompt_ids):].tolist()
        if 1 in new:
            new = new[: new.index(1) + 1]
        finish = "stop" if new and new[-1] == 1 else "length"
        text = self.tokenizer.decode([t for t in new if t != 1], skip_special_tokens=True)
        return text, finish, len(new)

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def chat_ids(self, messages) -> list[int]:
        from adapterkit.training.encoding import encode_prompt

        return encode_prompt(self.tokenizer, messages)
