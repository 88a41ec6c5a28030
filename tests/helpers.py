"""Tiny seeded models built from transformers configs, and small comparison helpers.

Every factory returns a model in eval mode whose weights depend only on `seed`,
so two calls give two identical, independent bases (one for PEFT, one for us).
"""

from __future__ import annotations

import os

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 64


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_llama(seed: int = 0, tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         tie_word_embeddings=tie_word_embeddings)
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


FACTORIES = {"gpt2": tiny_gpt2, "llama": tiny_llama, "bert": tiny_bert}

# Per architecture: the attention / MLP modules a typical config targets.
TARGETS = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "v_proj", "down_proj"],
    "bert": ["query", "value", "dense"],
}
EMBEDDINGS = {"gpt2": "wte", "llama": "embed_tokens", "bert": "word_embeddings"}


def input_ids(seed: int = 1, batch: int = 2, length: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


@torch.no_grad()
def logits(model, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = input_ids() if ids is None else ids
    return model(input_ids=ids).logits.detach().clone()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def randomize_adapter(model, seed: int = 3, std: float = 0.1) -> None:
    """Give every trainable (adapter) parameter random values, so the adapter does something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def param_snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def tiny_llama_for(tokenizer, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A tiny Llama whose vocabulary matches `tokenizer` (SmolLM2's, in the hf/training tests)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, **overrides,
    )
    return LlamaForCausalLM(config).eval()


WORDS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"] + [f"w{i}" for i in range(VOCAB - 5)]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '> ' + m['content'] + ' <eos> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def tiny_tokenizer():
    """A real (word-level) tokenizer over WORDS, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_base(folder):
    """The seed-0 tiny Llama and tiny_tokenizer as a transformers folder, as the CLI's --base reads it."""
    model = tiny_llama(seed=0)
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


REQUIRE_ALL_ENV = "ADAPTERKIT_REQUIRE_ALL"


def missing_tool(reason: str, module_level: bool = False):
    """Skip a test whose external tool (Chromium, PostgreSQL, vLLM) is absent, saying why.

    CI sets ADAPTERKIT_REQUIRE_ALL=1, since `make test` installs every such tool: there a
    missing tool fails the test instead, so nothing is skipped silently."""
    import pytest

    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL_ENV}=1 says it must run)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def save_random_adapters(base_dir, root, count: int = 20, varied: bool = True) -> dict[str, object]:
    """a00, a01, ...: random adapters saved as PEFT folders. `varied`: ranks 4 and 8 over two target
    sets, as a server meets them; else all rank 4 on q/v/down, so that any two combine."""
    from adapterkit import LoraConfig, get_peft_model
    from adapterkit.hf import load_base

    base, _ = load_base(base_dir)
    model = None
    folders = {}
    for i in range(count):
        name = f"a{i:02d}"
        targets = ["k_proj", "o_proj", "up_proj"] if varied and i % 2 else ["q_proj", "v_proj", "down_proj"]
        config = LoraConfig(r=8 if varied and not i % 3 else 4, lora_alpha=8, target_modules=targets)
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        model.set_adapter(name)
        randomize_adapter(model, seed=100 + i, std=0.6)
        folders[name] = model.save_pretrained(root / name, selected_adapters=[name]) / name
    return folders


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server that another process binds later (a subprocess, Ray).

    Taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range), which bind(("", 0)) and
    every outgoing connection draw from: a port handed out by bind(0) and released is free for the
    kernel to give to the next connection any process opens, before the server gets to bind it.
    Above 20000: Ray's worker ports are 10002-19999. In-process servers need none of this: they bind
    their socket themselves (serve_helpers.ServerThread)."""
    import random
    import socket

    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, low) if low > 20100 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: draw another
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port found between 20000 and {low}")
