"""SlotKVCache: rows of different lengths share one pass, written in place, and give the
logits a plain forward of each row alone gives."""

from __future__ import annotations

import torch

from adapterkit.serve.kv_cache import SlotKVCache
from helpers import tiny_llama


def _alone(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_rows_at_different_lengths_match_each_row_alone_and_nothing_is_reallocated():
    model = tiny_llama(seed=1)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 64, (n,), generator=generator).tolist() for n in (7, 2, 5)]
    cache = SlotKVCache.for_model(model, max_batch=4, max_len=20)
    pointers = [t.data_ptr() for t in cache.keys + cache.values]
    width = max(map(len, prompts))
    ids = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    mask, positions = cache.plan(0, [0, 0, 0], [len(p) for p in prompts], width)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1]
    for i, p in enumerate(prompts):
        assert torch.allclose(logits[i], _alone(model, p), atol=1e-5)
    # Three decode steps, every row at its own length; then row 0 leaves and row 2 moves into its place.
    sequences = [list(p) for p in prompts]
    for step in range(3):
        new = [int(torch.randint(5, 64, (1,), generator=generator)) for _ in sequences]
        lengths = [len(s) for s in sequences]
        mask, positions = cache.plan(0, lengths, [1, 1, 1], 1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(new).view(-1, 1), attention_mask=mask, position_ids=positions,
                           cache=cache).logits[:, -1]
        for s, token in zip(sequences, new):
            s.append(token)
        for i, s in enumerate(sequences):
            assert torch.allclose(logits[i], _alone(model, s), atol=1e-5), (step, i)
    cache.move_row(2, 0, len(sequences[2]))
    sequences = [sequences[2], sequences[1]]
    mask, positions = cache.plan(0, [len(s) for s in sequences], [1, 1], 1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[9], [10]]), attention_mask=mask, position_ids=positions,
                       cache=cache).logits[:, -1]
    assert torch.allclose(logits[0], _alone(model, sequences[0] + [9]), atol=1e-5)
    assert torch.allclose(logits[1], _alone(model, sequences[1] + [10]), atol=1e-5)
    assert [t.data_ptr() for t in cache.keys + cache.values] == pointers  # written in place, never regrown


def test_a_row_past_the_cache_is_refused():
    cache = SlotKVCache.for_model(tiny_llama(), max_batch=1, max_len=8)
    try:
        cache.plan(0, [7], [2], 2)
    except ValueError as exc:
        assert "8" in str(exc)
    else:
        raise AssertionError("plan accepted a row longer than the cache")
