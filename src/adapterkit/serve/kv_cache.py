"""SlotKVCache: one preallocated KV cache for every sequence the engine runs.

Each layer's keys and values live in one tensor of shape
(max_batch, kv_heads, max_len, head_dim), allocated once. Sequence i owns row i
and keeps its tokens at positions 0..len_i-1 of that row, so rows of different
lengths share one forward pass:

- before a forward the engine calls `plan(...)`, which says where each new token's
  K/V goes (its row and its own position) and returns the 4-D attention mask and the
  per-row position ids for that pass;
- during the forward, `update()` (called by every attention layer) writes the new
  K/V in place at those positions and returns views of the preallocated tensors,
  rows [lo, hi) and positions [0, L): nothing is concatenated at any step.

The running rows are kept contiguous ([0, n)) by the engine, which moves a row
down with `move_row` when a sequence leaves, so a pass always reads one slice.

Positions past a row's length may hold stale K/V from an earlier sequence; the
mask hides them. Memory is zeroed up to the longest length seen so far (never
touched memory could hold NaN, and NaN · 0 is NaN even under a mask).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class SlotKVCache(Cache):
    def __init__(self, num_layers: int, max_batch: int, max_len: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        super().__init__(layers=[])
        self.max_batch, self.max_len = max_batch, max_len
        self.dtype = dtype
        shape = (max_batch, kv_heads, max_len, head_dim)
        # empty: pages are committed only as `_zero_up_to` reaches them.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._zeroed = 0  # positions [0, _zeroed) of every row have been written at least once
        # Set by plan() for the next forward pass.
        self._window = (0, 0)
        self._kv_len = 0
        self._dst: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, positions) in the cache
        self._src: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, steps) in the new states

    @classmethod
    def for_model(cls, model, max_batch: int, max_len: int, dtype: torch.dtype | None = None) -> SlotKVCache:
        config = model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        param = next(model.parameters())
        return cls(config.num_hidden_layers, max_batch, max_len, kv_heads, head_dim,
                   dtype or param.dtype, param.device)

    # --- the engine's side ---------------------------------------------------------
    def plan(self, lo: int, starts: list[int], counts: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare a pass over rows [lo, lo + len(starts)).

        Row lo+b already holds `starts[b]` tokens and gets `counts[b]` new ones, given
        left-padded in a (rows, width) input (so its real tokens are the last counts[b]).
        Returns the additive attention mask (rows, 1, width, L) and position ids (rows, width).
        """
        rows = len(starts)
        device = self.keys[0].device
        start = torch.tensor(starts, dtype=torch.long)
        count = torch.tensor(counts, dtype=torch.long)
        step = torch.arange(width)
        pad = (width - count).view(-1, 1)  # (rows, 1): padded steps before the real tokens
        real = step.view(1, -1) >= pad  # (rows, width)
        positions = torch.where(real, start.view(-1, 1) + step.view(1, -1) - pad, 0)  # (rows, width)
        kv_len = int((start + count).max())
        if kv_len > self.max_len:
            raise ValueError(f"a row would reach {kv_len} tokens, past the cache's {self.max_len}")
        self._zero_up_to(kv_len)
        # A real query at position p sees keys 0..p of its row; a padded query sees key 0
        # only (its output is thrown away, but a row with no visible key would give NaN).
        keys = torch.arange(kv_len).view(1, 1, -1)
        visible = torch.where(real.unsqueeze(-1), keys <= positions.unsqueeze(-1), keys == 0)  # (rows, width, L)
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, torch.finfo(self.dtype).min)
        src_rows, src_steps = real.nonzero(as_tuple=True)
        self._window = (lo, lo + rows)
        self._kv_len = kv_len
        self._dst = ((src_rows + lo).to(device), positions[src_rows, src_steps].to(device))
        self._src = (src_rows.to(device), src_steps.to(device))
        return mask.unsqueeze(1).to(device), positions.to(device)

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row `src` into row `dst` (a sequence moving down)."""
        for tensor in (*self.keys, *self.values):
            tensor[dst, :, :length] = tensor[src, :, :length]

    def _zero_up_to(self, length: int) -> None:
        if length > self._zeroed:
            for tensor in (*self.keys, *self.values):
                tensor[:, :, self._zeroed:length].zero_()
            self._zeroed = length

    # --- the model's side (transformers' Cache interface) ------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the pass's new K/V (rows, kv_heads, width, head_dim) at each row's own positions;
        return the rows' whole K/V so far, (rows, kv_heads, L, head_dim), as views."""
        assert self._dst is not None and self._src is not None, "plan() must run before each forward"
        dst_rows, dst_pos = self._dst
        src_rows, src_steps = self._src
        lo, hi = self._window
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # Advanced indices around a slice put the indexed dimension first: (tokens, kv_heads, head_dim).
        keys[dst_rows, :, dst_pos] = key_states[src_rows, :, src_steps].to(keys.dtype)
        values[dst_rows, :, dst_pos] = value_states[src_rows, :, src_steps].to(values.dtype)
        return keys[lo:hi, :, : self._kv_len], values[lo:hi, :, : self._kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_len

    @property
    def is_compileable(self) -> bool:
        return False
