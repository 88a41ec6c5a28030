"""Shared pieces: model shapes built from configs (random weights), timing, adapters."""

from __future__ import annotations

import copy
import ctypes
import gc
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Real shapes, random weights: timings depend on shapes, not on trained values.
SHAPES = {
    "smollm2-135m": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=0)),
    "qwen2-0.5b": lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=0)),
}


def build_base(shape: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = SHAPES[shape]()
    model.generation_config.pad_token_id = 0
    return model.eval().requires_grad_(False)


def clone(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so RSS means what is held
    except OSError:
        pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(methods: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run every method `warmup` times, then `repeats` rounds, each round calling every
    method once in a rotated order (so drift and thermal state hit all alike).
    Returns name -> {"median_s", "min_s", "times_s"}."""
    names = list(methods)
    for _ in range(warmup):
        for name in names:
            methods[name]()
    times = {name: [] for name in names}
    for round_ in range(repeats):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            times[name].append(timed(methods[name]))
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for name, t in times.items()}
