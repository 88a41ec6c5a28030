"""One rank of the gloo group in test_distributed.py; spawned processes import only this."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adapterkit.errors import DistributedTrainingError
from adapterkit.training.distributed import ReplicaGroup


def group_worker(rank: int, world_size: int, init_file: str, results: str) -> None:
    """One rank of a real gloo group: every collective the trainer relies on, and its failures."""
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    group = ReplicaGroup(rank, world_size)
    out: dict = {"sum": group.sum([rank + 1, 0.5])}
    strided = nn.Parameter(torch.zeros(3, 2).T)  # a view, as adapters are views into their pack
    strided.grad = torch.full((2, 3), float(rank + 1))
    unused = nn.Parameter(torch.zeros(3))  # no gradient on any rank
    group.reduce_gradients([strided, unused])
    out["grad"], out["unused"] = strided.grad.tolist(), unused.grad.tolist()
    group.assert_replicas_identical([nn.Parameter(torch.ones(4))])
    drifted = nn.Parameter(torch.ones(4) + (1e-6 if rank == world_size - 1 else 0.0))
    try:
        group.assert_replicas_identical([drifted])
        out["drift"] = "passed"
    except DistributedTrainingError as exc:
        out["drift"] = str(exc)

    def fail() -> None:
        raise OSError("disk full")

    try:
        group.write_on_writer(fail)
        out["failed_write"] = "passed"
    except (OSError, DistributedTrainingError) as exc:
        out["failed_write"] = type(exc).__name__
    out["write"] = group.write_on_writer(lambda: "written")
    Path(results, f"{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()
