"""Decode step and prefill with many adapters in one batch.

Methods, measured interleaved on the same inputs:
  base            the plain model, no adapter code at all
  merged          one adapter merged into a copy of the weights (adapterkit merge_and_unload)
  unmerged        adapterkit, one active adapter, not merged
  adapterkit_mixed adapterkit, adapter_names=[...] with k distinct adapters over the rows
  peft_mixed      PEFT 0.21.2, adapter_names=[...] with the same row pattern
"""

from __future__ import annotations

import peft
import torch
from transformers import DynamicCache

import adapterkit
from adapterkit import AdapterModel
from bench.common import ALL_LINEAR, build_base, clone, free_memory, interleaved


def _config(rank: int, lib):
    return lib.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_LINEAR, init_lora_weights=False)


def _row_names(k: int, rows: int) -> list[str]:
    return [f"a{i % k}" for i in range(rows)]


def _decode_inputs(model, batch: int, kv_len: int):
    """One new token per row after `kv_len` cached positions (random keys and values)."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(1)
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):
        kv = torch.randn(2, batch, config.num_key_value_heads, kv_len, head_dim, generator=generator)
        cache.update(kv[0], kv[1], layer)
    input_ids = torch.randint(3, config.vocab_size, (batch, 1), generator=generator)
    mask = torch.ones(batch, kv_len + 1, dtype=torch.long)
    return input_ids, mask, cache


def _prefill_inputs(model, batch: int, length: int):
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, model.config.vocab_size, (batch, length), generator=generator)
    return input_ids, torch.ones_like(input_ids), None


def run_shape(shape: str, ranks: list[int], ks: list[int], mode: str, batch: int, length: int,
              repeats: int, log) -> list[dict]:
    """Rows of results for one model shape and one mode ("decode" or "prefill")."""
    base = build_base(shape)
    if mode == "decode":
        input_ids, mask, cache = _decode_inputs(base, batch, length)
    else:
        input_ids, mask, cache = _prefill_inputs(base, batch, length)

    def call(model, **kwargs):
        def step():
            with torch.inference_mode():
                model(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                      use_cache=cache is not None, logits_to_keep=1, **kwargs)
            if cache is not None:
                cache.crop(-(cache.get_seq_length() - length))  # back to the same KV length
        return step

    rows = []
    for rank in ranks:
        n_adapters = max(ks)
        ours = AdapterModel(clone(base))
        for i in range(n_adapters):
            ours.add_adapter(f"a{i}", _config(rank, adapterkit))
        ours.set_adapter("a0")
        ours.eval()
        merged = AdapterModel(clone(base), _config(rank, adapterkit), "a0").merge_and_unload()
        theirs = peft.get_peft_model(clone(base), _config(rank, peft), adapter_name="a0")
        for i in range(1, n_adapters):
            theirs.add_adapter(f"a{i}", _config(rank, peft))
        theirs.set_adapter("a0")
        theirs.eval()
        for k in ks:
            names = _row_names(k, batch)
            methods = {"merged": call(merged)}
            if k == min(ks):  # these do not depend on k: measured once per rank, beside the rest
                methods.update(base=call(base), unmerged=call(ours))
            methods.update(adapterkit_mixed=call(ours, adapter_names=names),
                           peft_mixed=call(theirs, adapter_names=names))
            result = interleaved(methods, repeats)
            for method, stats in result.items():
                rows.append({"shape": shape, "mode": mode, "batch": batch, "length": length, "rank": rank,
                             "k": k, "method": method, **stats})
            log(f"{shape} {mode} r={rank} k={k}: " + ", ".join(
                f"{m} {s['median_s'] * 1e3:.1f} ms" for m, s in result.items()))
        del ours, merged, theirs
        free_memory()
    return rows
