"""RankPack: the LoRA factors of one module, for every adapter of one rank, in one tensor.

Storing all adapters of a rank contiguously lets a mixed batch gather each row's
factors with one index operation (Punica's BGMV idea in plain PyTorch) instead
of looping over adapters. Each adapter's `nn.Parameter` is a *view* into the
pack, so the optimizer's in-place updates and `load_state_dict` land in the pack
with nothing to synchronise, and resident memory stays at the raw tensor bytes
(plus spare capacity, grown geometrically so adding an adapter is O(1) amortised).
Spare slots are allocated but never written until handed out, so the operating
system does not back them with memory (large allocations are mapped lazily).

Slot 0 is always zero: rows that use no adapter of this rank point there. Free
slots hold garbage; no row points at them, and `add` zeroes a slot it hands out
(unless its caller, a validated load, overwrites both factors at once).
"""

from __future__ import annotations

import heapq

import torch

# Capacity grows by half: each add then copies ~2 adapters' worth of older slots on average
# (amortised O(1)). Spare slots are never written, so on CPU they cost address space, not RAM.
_GROWTH = 1.5


class RankPack:
    def __init__(self, rank: int, a_cols: int, b_rows: int, device, dtype, capacity: int = 2) -> None:
        self.rank = rank
        self.a_cols = a_cols  # in_features (or num_embeddings)
        self.b_rows = b_rows  # out_features (or embedding_dim)
        self.capacity = 0
        # Both factors are stored transposed: At (cap, in, r) and Bt (cap, r, out). A mixed
        # decode step then reads each row's factors in place as contiguous rows (two
        # embedding_bags, see LoraAdapters._mixed_delta) instead of gathering copies.
        # Each adapter's parameters are transposed views, in PEFT's shapes (r, in), (out, r).
        self.At = torch.zeros(0, a_cols, rank, device=device, dtype=dtype)  # (cap, in, r)
        self.Bt = torch.zeros(0, rank, b_rows, device=device, dtype=dtype)  # (cap, r, out)
        # Scales stay float32 whatever the factors' dtype: in bfloat16, 10/12 would become
        # 0.832 and bias every output of the adapter by 0.2% (see LoraAdapters._mixed_delta).
        self.scale = torch.zeros(0, device=device, dtype=torch.float32)  # (cap,)
        self.free: list[int] = []
        self.used: dict[str, int] = {}  # adapter name -> slot
        self._grow(max(2, capacity))
        self._zero(heapq.heappop(self.free))  # slot 0: the zero adapter, never handed out

    @property
    def device(self) -> torch.device:
        return self.At.device

    @property
    def dtype(self) -> torch.dtype:
        return self.At.dtype

    @property
    def A(self) -> torch.Tensor:
        """(cap, r, in): a view of the transposed storage."""
        return self.At.transpose(1, 2)

    @property
    def B(self) -> torch.Tensor:
        """(cap, out, r): a view of the transposed storage."""
        return self.Bt.transpose(1, 2)

    def _grow(self, new_capacity: int, params=None) -> None:
        """Reallocate to `new_capacity` slots and re-point the adapters' parameters."""
        # empty, not zeros: writing the spare slots would make them resident.
        At = self.At.new_empty(new_capacity, self.a_cols, self.rank)
        Bt = self.Bt.new_empty(new_capacity, self.rank, self.b_rows)
        scale = self.scale.new_empty(new_capacity)
        At[: self.capacity] = self.At
        Bt[: self.capacity] = self.Bt
        scale[: self.capacity] = self.scale
        self.At, self.Bt, self.scale = At, Bt, scale
        for slot in range(self.capacity, new_capacity):
            heapq.heappush(self.free, slot)  # a min-heap: the lowest free slot goes first
        self.capacity = new_capacity
        if params is not None:
            self.relink(params)

    def reserve(self, capacity: int, params) -> None:
        """Room for `capacity` slots (slot 0 included) now, so adds up to it never reallocate."""
        if capacity > self.capacity:
            self._grow(capacity, params)

    def relink(self, params) -> None:
        """Make each adapter's parameters views of its slot again."""
        lora_A, lora_B = params
        # unbind makes every slot's view in one call; indexing the property per slot
        # would build two transposed views per adapter in Python.
        views_A, views_B = self.A.unbind(0), self.B.unbind(0)
        for name, slot in self.used.items():
            lora_A[name].data = views_A[slot]
            lora_B[name].data = views_B[slot]

    def add(self, name: str, scale: float, params, zero: bool = True) -> int:
        """Take a free slot for `name`. `zero=False` skips clearing it, for a caller that
        overwrites both factors at once (a validated load)."""
        if not self.free:
            self._grow(max(self.capacity + 8, int(self.capacity * _GROWTH)), params)
        slot = heapq.heappop(self.free)
        if zero:
            self._zero(slot)
        self.used[name] = slot
        self.scale[slot] = scale
        return slot

    def remove(self, name: str) -> None:
        slot = self.used.pop(name)
        self._zero(slot)
        heapq.heappush(self.free, slot)

    def _zero(self, slot: int) -> None:
        self.At[slot].zero_()
        self.Bt[slot].zero_()
        self.scale[slot] = 0

    def rebuild_from(self, params) -> None:
        """After the module was moved or cast (`.to`, `.half`), re-pack from the parameters."""
        lora_A, lora_B = params
        some = next(iter(self.used), None)
        device, dtype = (lora_A[some].device, lora_A[some].dtype) if some else (self.device, self.dtype)
        old_scale = self.scale.to(device=device)  # still float32
        self.At = torch.empty(self.capacity, self.a_cols, self.rank, device=device, dtype=dtype)
        self.Bt = torch.empty(self.capacity, self.rank, self.b_rows, device=device, dtype=dtype)
        self.scale = old_scale
        self._zero(0)
        for name, slot in self.used.items():
            self.A[slot] = lora_A[name].data
            self.B[slot] = lora_B[name].data
        self.relink(params)
