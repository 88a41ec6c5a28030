"""FSDP2 for LoRA: the frozen base sharded across ranks, the adapters whole on every rank.

`shard_base` applies `torch.distributed.fsdp.fully_shard` to each transformer block
(the classes transformers lists in `_no_split_modules`) and then to the base model,
so each rank keeps 1/N of every base weight and all-gathers a block's weights just
for its forward and backward.

Every adapter parameter is passed as `ignored_params`: FSDP leaves it alone, and the
adapters stay replicated, their gradients summed by the ReplicaGroup exactly as in
plain data-parallel training. Two reasons, both checked on torch 2.13:

- An adapter's parameters are strided *views* into a RankPack (core/pack.py), the
  one tensor that holds every adapter of a rank at a module, which is what lets a
  mixed batch gather each row's factors in one operation. fully_shard refuses them
  ("FSDP does not support non-contiguous parameters yet: param.shape=(4, 16)
  param.stride()=(1, 4)").
- Even a contiguous view would not survive: fully_shard replaces each parameter by
  a new DTensor holding this rank's shard, so the pack, and every mixed batch that
  reads it, would no longer see the trained values.

LoRA weights are a tiny fraction of the model; replicating them costs little and
removes the failure that PEFT users hit with FSDP and ZeRO-3 (peft#2500,
accelerate#4206): an adapter saved from one rank's shard, or from empty
placeholder tensors. `check_adapter_whole` makes that impossible to miss: before a
save, every adapter tensor must be a plain tensor of its full (r, in) / (out, r)
shape, non-empty, and (ReplicaGroup.assert_replicas_identical) equal on every rank.

FSDP2 with gloo on CPU works on torch 2.13 (fully_shard on a "cpu" device mesh):
that is what the tests run.
"""

from __future__ import annotations

import torch
from torch import nn

from adapterkit.core.layer import LoraAdapters, adapter_tensor_shapes
from adapterkit.errors import DistributedTrainingError
from adapterkit.training.distributed import ReplicaGroup


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LoRA factor in `model`, trainable or not (all of them live in LoraAdapters)."""
    return [p for module in model.modules() if isinstance(module, LoraAdapters) for p in module.parameters()]


def transformer_blocks(base: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model: the classes it names in `_no_split_modules`."""
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise DistributedTrainingError(
            f"{type(base).__name__} names no transformer block class in _no_split_modules, so there is "
            f"nothing to shard per block; train it without --shard-base (data-parallel only)"
        )
    return blocks


def shard_base(model: nn.Module, group: ReplicaGroup) -> None:
    """Shard `model`'s base weights over the group's ranks with FSDP2; adapters stay whole.

    Attach (and load) adapters before calling this, and move the model to `group.device`
    first: FSDP moves only the parameters it manages."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not group.distributed:
        raise DistributedTrainingError(
            "--shard-base needs several processes; launch with --nproc N (N > 1) or torchrun"
        )
    get_base_model = getattr(model, "get_base_model", None)  # an AdapterModel: shard the model it wraps
    base = get_base_model() if get_base_model is not None else model
    ignored = set(adapter_parameters(model))
    mesh = init_device_mesh(group.device.type, (group.world_size,))
    for block in transformer_blocks(base):
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(base, mesh=mesh, ignored_params=ignored)


def check_adapter_whole(model: nn.Module) -> int:
    """Raise unless every adapter tensor is a whole, plain tensor of its full shape; returns how many."""
    checked = 0
    for module in model.modules():
        if not isinstance(module, LoraAdapters):
            continue
        for name, info in module.info.items():
            # Every tensor of the adapter here (a variant's too: DoRA's magnitude), by its in-memory name.
            shapes = adapter_tensor_shapes(module.kind, module.base, info.rank, info.variant)
            names = {"A": "lora_A", "B": "lora_B", **{t.role: t.attr for t in info.variant.tensors}}
            for role, tensor in module.tensors_of(name).items():
                factor, shape = names[role], shapes[role]
                local_shape = tuple(_local(tensor).shape)
                if local_shape != shape or tensor.numel() == 0:
                    raise DistributedTrainingError(
                        f"adapter {name!r} {factor} holds a tensor of shape {local_shape} on this rank, not its "
                        f"full shape {shape}: it was sharded; shard the base with adapterkit.training.fsdp.shard_base, "
                        f"which leaves adapters whole"
                    )
                checked += 1
    return checked


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)  # a DTensor: what this rank really holds
    return to_local() if to_local is not None else tensor
