"""Which adapters a forward pass runs: model-wide, or for one call alone.

One AdapterRouting is shared by every adapted module of a model. It holds two things:

- the model-wide choice (`active`, `disabled`), set by set_adapter and friends; one
  assignment switches every layer, whatever the number of layers or adapters;
- the row ids of mixed batches: adapter name -> a small integer (0 is the base) that
  indexes every module's slot tables. Ids of deleted adapters are handed out again, so
  the tables stay as long as the most adapters ever resident at once, however many
  adapters a long-running process loads and deletes.

A call that says what it runs (`adapter_names=[...]`) does not touch the shared state:
its Route lives in a context variable, so it is private to the thread (and the asyncio
task) that made the call, and two threads can run different batches at once.

Loading and deleting adapters still change shared tensors (packs, slot tables): the
caller serialises them against forward calls (a server's scheduler does; see README).
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Protocol

import torch

BASE_ID = 0  # the row id of rows that use no adapter


@dataclass(frozen=True)
class Route:
    """What a forward pass runs. Frozen: a layer reads one consistent value per call."""

    active: tuple[str, ...] = ()
    disabled: bool = False
    # Mixed batches: the row id of each row (rows,), and the adapter names those rows use.
    row_ids: torch.Tensor | None = None
    row_names: frozenset[str] | None = None


class SlotTableOwner(Protocol):
    def cover_ids(self, capacity: int) -> None:
        """Grow every slot table to cover row ids below `capacity` (new entries: slot 0)."""

    def reserve_slots(self, adapters: int) -> None:
        """Make room for `adapters` adapters in every pack."""


# Per thread / per asyncio task: routing -> the Route of the call in progress. Never
# mutated in place (a new dict on each set), so a copied context cannot see later calls.
_CALL_ROUTES: ContextVar[dict[AdapterRouting, Route] | None] = ContextVar("adapterkit_call_routes", default=None)


class AdapterRouting:
    def __init__(self, active: tuple[str, ...] = (), disabled: bool = False) -> None:
        self._shared = Route(tuple(active), disabled)
        self.ids: dict[str, int] = {}  # adapter name -> row id (>= 1)
        self._free_ids: list[int] = []  # a min-heap of released ids: the lowest is reused first
        self._next_id = BASE_ID + 1
        # Every slot table of every module covers the ids below this; grown by doubling.
        self.id_capacity = 8
        self._owners: weakref.WeakSet = weakref.WeakSet()
        self.reserved_slots = 0  # room every pack is created with (see reserve)
        # Calls of this model running with their own Route, on any thread. While there are none,
        # layers read the shared Route without touching the context variable, which torch.compile
        # cannot trace (each adapted layer would break the graph).
        self._calls_with_route = 0
        self._count_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # A copy (deepcopy of a model, pickling) watches its own modules, which re-register
        # (LoraAdapters.__setstate__), and has no call in flight.
        state = dict(self.__dict__)
        del state["_owners"], state["_count_lock"]
        state["_calls_with_route"] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._owners = weakref.WeakSet()
        self._count_lock = threading.Lock()

    # --- the model-wide choice ------------------------------------------------------
    @property
    def active(self) -> tuple[str, ...]:
        return self._shared.active

    @active.setter
    def active(self, names: tuple[str, ...]) -> None:
        self._shared = replace(self._shared, active=tuple(names))

    @property
    def disabled(self) -> bool:
        return self._shared.disabled

    @disabled.setter
    def disabled(self, flag: bool) -> None:
        self._shared = replace(self._shared, disabled=bool(flag))

    # --- per call -----------------------------------------------------------------------
    def current(self) -> Route:
        """The Route of the call in progress on this thread / task, else the model-wide one."""
        if self._calls_with_route:
            routes = _CALL_ROUTES.get()
            if routes is not None:
                route = routes.get(self)
                if route is not None:
                    return route
        return self._shared

    @property
    def row_ids(self) -> torch.Tensor | None:
        """The row ids of the mixed batch this thread is running (None outside one)."""
        return self.current().row_ids

    @contextlib.contextmanager
    def call(self, route: Route):
        """Run the block with `route`, for this thread / task only."""
        with self._count_lock:  # += is not atomic across threads
            self._calls_with_route += 1
        routes = _CALL_ROUTES.get()
        token = _CALL_ROUTES.set({**(routes or {}), self: route})
        try:
            yield
        finally:
            _CALL_ROUTES.reset(token)
            with self._count_lock:
                self._calls_with_route -= 1

    # --- row ids ---------------------------------------------------------------------------
    def watch(self, owner: SlotTableOwner) -> None:
        """Keep `owner`'s slot tables covering every id handed out (held weakly)."""
        self._owners.add(owner)

    def id_for(self, name: str) -> int:
        """The row id of `name`, handed out on first use: the lowest free one."""
        row_id = self.ids.get(name)
        if row_id is None:
            if self._free_ids:
                row_id = heapq.heappop(self._free_ids)
            else:
                row_id, self._next_id = self._next_id, self._next_id + 1
            if row_id >= self.id_capacity:
                self.id_capacity = max(2 * self.id_capacity, row_id + 1)
                for owner in list(self._owners):
                    owner.cover_ids(self.id_capacity)
            self.ids[name] = row_id
        return row_id

    def reserve(self, adapters: int) -> None:
        """Room for `adapters` resident adapters, made now: ids, slot tables, and every pack
        (existing ones and those created later) hold that many without reallocating.

        A pack that outgrows its room reallocates and copies every resident adapter of its
        rank (about 0.6 s with 700 resident on a 135M model); a server that bounds its
        resident set reserves that bound once, at start, and never pays it. On CPU the
        unused room costs address space only (it is never written); on a GPU it is
        allocated now.
        """
        self.reserved_slots = max(self.reserved_slots, adapters)
        if adapters + 1 > self.id_capacity:
            self.id_capacity = adapters + 1
        for owner in list(self._owners):
            owner.cover_ids(self.id_capacity)
            owner.reserve_slots(adapters)

    def release(self, name: str) -> None:
        """Give `name`'s id back, once no module maps it to a slot any more (after a delete)."""
        row_id = self.ids.pop(name, None)
        if row_id is not None:
            heapq.heappush(self._free_ids, row_id)

    def release_all(self) -> None:
        for name in list(self.ids):
            self.release(name)
