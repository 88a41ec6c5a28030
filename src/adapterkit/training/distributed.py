"""Data-parallel LoRA training across processes: which rows each rank trains on, and
how the ranks' adapter gradients become one.

A `ReplicaGroup` is one process's view of the group. Launched by torchrun (or
`adapterkit train --nproc N`, which calls the same launcher), it joins the process
group the launcher describes in the environment: gloo on CPU, NCCL on CUDA. Not
launched, it is a group of one and every method is a no-op, so the trainer has a
single code path.

How a step is split. The trainer's example order is a pure function of (seed,
micro-batch number) (order.py), so every rank computes the same global micro-batch
and keeps a contiguous slice of it (`shard`): the global batch is the same as a
single-process run's, whatever the number of processes. Every rank reads and
tokenizes the whole JSONL file (cheap next to training): a bad line then fails
every rank the same way before the first collective, instead of one rank dying
while the others wait for it; each rank runs the model on its own rows only.
Each rank weights its local mean loss by its share of the *global* count of
predicted tokens, so the *sum* of the ranks' gradients is exactly the
single-process gradient (up to the order of float additions). Checkpoints hold the global step only, so a run resumes
with any number of processes.

Why an explicit all_reduce and not DistributedDataParallel. Only the adapter
gradients cross the wire: one flat all_reduce of the trainable (LoRA) gradients
per optimizer step, after all micro-batches. DDP would work on a single adapter
(it accepts the adapters' parameters, which are strided views into a RankPack),
but: it averages where our token weighting needs a sum; it reduces on every
backward unless each micro-batch but the last runs under `no_sync()`; it needs
`find_unused_parameters=True` as soon as a model holds a second trainable adapter
that the step does not run (checked: "Expected to have finished reduction in the
prior iteration"); and it wraps the model, hiding `save_pretrained` and the rest
of AdapterModel behind `.module`. LoRA gradients are a few MB, so DDP's
bucketing and its overlap of communication with backward buy little here.

Every rank applies the same AdamW update to the same summed gradients, so the
replicas stay identical; `assert_replicas_identical` checks that bit for bit
before anything is saved. Rank 0 alone writes files (`write_on_writer`), and the
other ranks learn whether it succeeded, so a failed write never leaves them
waiting at a barrier.

FSDP2 (sharding the *base* across ranks) is in `fsdp.py`; it composes with this:
the LoRA parameters stay replicated and are reduced here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from adapterkit.errors import DistributedTrainingError

T = TypeVar("T")

# Set by torch.distributed.run (torchrun) in every worker it starts.
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True inside a worker process started by torch.distributed's launcher."""
    return all(name in os.environ for name in _LAUNCHER_VARIABLES)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones: the backends that can move them."""
    return "nccl" if device.type == "cuda" else "gloo"


class ReplicaGroup:
    """Rank, world size and the collectives data-parallel training needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 owns_process_group: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device or torch.device("cpu")
        self._owns_process_group = owns_process_group

    @classmethod
    def from_environment(cls) -> ReplicaGroup:
        """Join the process group torchrun describes; a group of one when not launched."""
        if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
            return cls()
        local_rank = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():  # NCCL refuses two ranks on one GPU
                raise DistributedTrainingError(
                    f"process {local_rank} has no GPU of its own: this machine has {torch.cuda.device_count()}; "
                    f"start at most {torch.cuda.device_count()} processes per machine"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(backend_for(device))
        return cls(dist.get_rank(), dist.get_world_size(), device, owns_process_group=owns)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints and the final adapter; the others only compute."""
        return self.rank == 0

    def wait_for_all(self) -> None:
        """Every rank reaches this before any goes on: called before tearing the group down, so that a rank
        done early (not the writer) does not destroy its process group while rank 0 still saves (a worker
        aborted with "terminate called without an active exception" in CI)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False

    # --- data ---------------------------------------------------------------------
    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < self.world_size:
            raise DistributedTrainingError(
                f"batch size {batch_size} is smaller than the {self.world_size} processes, so some would "
                f"train on nothing; use --batch-size {self.world_size} or more, or fewer processes"
            )

    def shard(self, rows: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of one global micro-batch (sizes differ by at most one)."""
        start = self.rank * len(rows) // self.world_size
        stop = (self.rank + 1) * len(rows) // self.world_size
        return list(rows[start:stop])

    def seed_step(self, seed: int, step: int) -> None:
        """Dropout masks per rank and step. A single process keeps the one seeded stream the
        trainer already draws from (and checkpoints); ranks reseed each step from (seed, step,
        rank), so a resumed run with the same number of processes draws the same masks."""
        if self.distributed:
            torch.manual_seed((seed * 1_000_003 + step) * 4_099 + self.rank)

    # --- collectives ----------------------------------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over the ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        totals = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return totals.tolist()

    def reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Replace each parameter's gradient by the sum of every rank's: one flat all_reduce."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param, grad in zip(params, grads):
            numel = grad.numel()
            chunk = flat[offset: offset + numel].view_as(grad)
            if param.grad is None:
                param.grad = chunk.clone()
            else:
                param.grad.copy_(chunk)
            offset += numel

    @torch.no_grad()
    def assert_replicas_identical(self, params: Sequence[nn.Parameter]) -> None:
        """Every rank must hold rank 0's adapter exactly, or a save would record one rank's drift."""
        if not self.distributed:
            return
        mine = torch.cat([p.detach().reshape(-1) for p in params])
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        differs = self.sum([0.0 if torch.equal(mine, reference) else 1.0])[0]
        if differs:
            raise DistributedTrainingError(
                f"the adapter differs between ranks on {int(differs)} of {self.world_size} processes; "
                f"the ranks must start from the same adapter (same --seed) and apply the same updates"
            )

    def write_on_writer(self, write: Callable[..., T], *args) -> T | None:
        """Run `write(*args)` on rank 0; every rank returns once it finished, and raises if it failed."""
        result, error = None, None
        if self.is_writer:
            try:
                result = write(*args)
            except Exception as exc:  # re-raised below, after telling the other ranks
                error = exc
        failed = self.sum([1.0 if error is not None else 0.0])[0]  # also the barrier
        if error is not None:
            raise error
        if failed:
            raise DistributedTrainingError("rank 0 failed to write its files; its own error says why")
        return result
