"""Engine: the one thread that owns the model, and continuous batching on it.

Nothing else calls the model or changes its adapters: request handlers submit
sequences (`submit`) and model changes (`call`), and read results from the
callback each sequence carries. Each turn of the scheduler loop:

1. runs the queued model changes (adapter loads and deletions), between passes;
2. admits waiting sequences into free rows and prefills them in one pass (their
   first token comes from it);
3. advances every running sequence by one token in one decode pass, each row with
   its own adapter (or the base) through AdapterModel's per-row `adapter_names`;
4. drops finished and cancelled sequences at once, freeing their rows.

Sequences only ever name adapters that are resident for their whole life (the
ResidentAdapters lease guarantees it), so a deletion between passes never pulls
an adapter out from under a running row.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from adapterkit.model.mixed import BASE_ROW
from adapterkit.serve.errors import QueueFullError
from adapterkit.serve.kv_cache import SlotKVCache
from adapterkit.serve.sampling import SamplingParams, sample

log = logging.getLogger("adapterkit.serve")

# What a sequence's sink receives: (token id or None, finish reason or None, error text or None).
# Finish reasons are OpenAI's: "stop" (an end-of-sequence token), "length" (max_tokens reached),
# "cancelled" (the handler cancelled it; nothing more follows), "error".
Sink = Callable[[int | None, str | None, str | None], None]

_ids = itertools.count(1)


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    adapter: str  # a resident adapter's name in the model, or BASE_ROW
    params: SamplingParams
    sink: Sink
    id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False  # set by the handler (disconnect, stop string)
    done: bool = False  # set by the engine once it sent the finish reason
    row: int = -1
    submitted_at: float = field(default_factory=time.perf_counter)

    @property
    def length(self) -> int:
        """Tokens in the cache for this row (prompt + generated, the last one not fed back yet)."""
        return len(self.prompt) + max(len(self.generated) - 1, 0)


@dataclass
class EngineStats:
    waiting: int = 0
    running: int = 0
    tokens_generated: int = 0
    steps: int = 0
    prefills: int = 0
    errors: int = 0


class Engine:
    def __init__(self, model, *, max_batch: int, max_model_len: int, max_queue: int,
                 eos_token_ids: set[int]) -> None:
        self.model = model
        self.max_batch, self.max_model_len, self.max_queue = max_batch, max_model_len, max_queue
        self.eos_token_ids = frozenset(eos_token_ids)
        self.cache = SlotKVCache.for_model(model, max_batch, max_model_len)
        self.device = next(model.parameters()).device
        self.stats = EngineStats()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []  # row i holds _running[i]
        self._calls: collections.deque[tuple[Callable, Future]] = collections.deque()
        self._wake = threading.Condition()
        self._stop = False
        self._closed = True  # no loop running: call() runs inline
        self._thread: threading.Thread | None = None

    # --- the handlers' side (any thread) ---------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = self._closed = False
            self._thread = threading.Thread(target=self._loop, name="adapterkit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop; sequences still waiting or running are told they were cancelled."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (a request's n choices) together, or raise QueueFullError and queue none."""
        with self._wake:
            if len(self._waiting) + len(sequences) > self.max_queue:
                raise QueueFullError(
                    f"the queue holds {len(self._waiting)} waiting sequences (limit --max-queue "
                    f"{self.max_queue}); retry shortly")
            self._waiting.extend(sequences)
            self.stats.waiting = len(self._waiting)
            self._wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop generating for `sequence`; its row is freed before the next pass."""
        sequence.cancelled = True
        with self._wake:
            self._wake.notify()

    def call(self, fn: Callable) -> Future:
        """Run fn(model) on the engine thread between passes; the Future gets its result."""
        future: Future = Future()
        with self._wake:
            if self._closed:
                # Not running (before start, or after stop): nothing else touches the model.
                _run_into(fn, self.model, future)
                return future
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    @property
    def free_rows(self) -> int:
        return self.max_batch - len(self._running)

    # --- the scheduler loop (engine thread only) -------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._stop or self._calls or self._waiting or self._running):
                        self._wake.wait()
                    if self._stop:
                        self._closed = True  # from now on call() runs inline: this thread no longer uses the model
                        break
                    calls = list(self._calls)
                    self._calls.clear()
                for fn, future in calls:
                    _run_into(fn, self.model, future)
                try:
                    self._turn()
                except Exception as exc:  # a failed pass fails its sequences, never the server
                    log.exception("engine pass failed")
                    self.stats.errors += 1
                    for seq in list(self._running):
                        seq.sink(None, "error", f"{type(exc).__name__}: {exc}")
                    self._running.clear()
        for seq in [*self._running, *self._waiting]:
            seq.sink(None, "cancelled", None)
        self._running.clear()
        self._waiting.clear()
        for _fn, future in self._calls:
            future.cancel()

    def _turn(self) -> None:
        self._drop_cancelled()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        self._drop_cancelled()
        if self._running:  # every turn decodes, so a stream of arrivals cannot starve running rows
            self._decode()
        self.stats.running = len(self._running)

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        with self._wake:
            while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                seq = self._waiting.popleft()
                if seq.cancelled:
                    seq.sink(None, "cancelled", None)
                    continue
                admitted.append(seq)
            self.stats.waiting = len(self._waiting)
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> None:
        """One pass over the new rows, left-padded to the longest prompt."""
        lo = len(self._running)
        for i, seq in enumerate(admitted):
            seq.row = lo + i
        self._running.extend(admitted)
        width = max(len(s.prompt) for s in admitted)
        ids = torch.zeros(len(admitted), width, dtype=torch.long)
        for i, seq in enumerate(admitted):
            ids[i, width - len(seq.prompt):] = torch.tensor(seq.prompt)
        mask, positions = self.cache.plan(lo, [0] * len(admitted), [len(s.prompt) for s in admitted], width)
        self.stats.prefills += 1
        self._step(admitted, ids, mask, positions)

    def _decode(self) -> None:
        rows = self._running
        ids = torch.tensor([[s.generated[-1]] for s in rows], dtype=torch.long)
        mask, positions = self.cache.plan(0, [s.length for s in rows], [1] * len(rows), 1)
        self._step(rows, ids, mask, positions)

    def _step(self, rows: list[Sequence], ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> None:
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                         cache=self.cache, use_cache=True, logits_to_keep=1,
                         adapter_names=[s.adapter for s in rows])
        tokens = sample(out.logits[:, -1, :], [s.params for s in rows])
        self.stats.steps += 1
        self.stats.tokens_generated += len(rows)
        finished = False
        for seq, token in zip(rows, tokens):
            seq.generated.append(token)
            reason = None
            if token in self.eos_token_ids and not seq.params.ignore_eos:
                reason = "stop"
            elif len(seq.generated) >= seq.params.max_tokens or len(seq.prompt) + len(seq.generated) >= self.max_model_len:
                reason = "length"
            if reason is not None:
                seq.done = finished = True  # leaves at once: _drop_cancelled frees the row
            seq.sink(token, reason, None)
        if finished:
            self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        """Free the rows of finished and cancelled sequences, moving later rows down into the holes
        so the running rows stay [0, n)."""
        running = self._running
        gone = [s.cancelled or s.done for s in running]  # read once: handlers may cancel meanwhile
        if not any(gone):
            return
        keep = [s for s, g in zip(running, gone) if not g]
        n = len(keep)
        holes = [i for i in range(n) if gone[i]]
        movers = [s for s, g in zip(running[n:], gone[n:]) if not g]
        for hole, seq in zip(holes, movers):
            self.cache.move_row(seq.row, hole, seq.length)
            seq.row = hole
        self._running = sorted(keep, key=lambda s: s.row)
        self.stats.running = len(self._running)


def _run_into(fn: Callable, model, future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(model))
    except BaseException as exc:  # the caller gets it through the Future
        future.set_exception(exc)


__all__ = ["BASE_ROW", "Engine", "EngineStats", "Sequence"]
