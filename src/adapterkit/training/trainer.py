"""The LoRA trainer: AdamW on whatever the model leaves trainable.

Works on any nn.Module whose forward takes input_ids / attention_mask / labels
and returns an object with `.loss` (a transformers causal LM, an AdapterModel,
a PEFT PeftModel). The base is expected to be frozen already; only parameters
with `requires_grad` are optimized and checkpointed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adapterkit.training.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint_state, save_checkpoint
from adapterkit.training.collate import collate_training
from adapterkit.training.data import ChatExample
from adapterkit.training.distributed import ReplicaGroup
from adapterkit.training.encoding import IGNORE_INDEX, EncodedExample, encode_example
from adapterkit.training.errors import CheckpointError
from adapterkit.training.order import ExampleOrder
from adapterkit.training.schedule import warmup_then_decay


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    decay: str = "cosine"  # or "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    output_dir: str | None = None  # where checkpoints go; None: no checkpoints
    checkpoint_every: int = 0  # steps between checkpoints; 0: only the final one
    # Left-pad and ask the model for logits of the response tail only
    # (`logits_to_keep`); the vocabulary projection is a large share of a small
    # model's compute. Needs a model whose forward takes `logits_to_keep` and
    # whose positions are relative (RoPE); set False otherwise.
    trim_logits: bool = True
    progress: bool = True

    def resume_key(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        key = asdict(self)
        for free in ("output_dir", "checkpoint_every", "progress"):
            key.pop(free)
        return key


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # mean token loss of each optimizer step
    seconds: float = 0.0  # of this call (a resumed run counts only its own part)
    tokens: int = 0  # non-padding tokens seen by this call
    last_checkpoint: Path | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters; wrap the base model with "
            f"get_peft_model(model, LoraConfig(...)) before training"
        )
    return params


def train(model: nn.Module, tokenizer, examples: Sequence[ChatExample], config: TrainConfig | None = None,
          resume_from: str | Path | None = None, group: ReplicaGroup | None = None) -> TrainResult:
    """Train `model`'s trainable parameters on `examples`; returns losses and timings.

    `resume_from` is a checkpoint folder, or "latest" for the newest complete
    checkpoint in `config.output_dir`. A resumed run ends with the same weights
    as an uninterrupted one.

    `group` (distributed.py) splits each global micro-batch across processes and sums
    their adapter gradients; every rank calls `train` with the same arguments, and
    rank 0 alone writes checkpoints. Losses and tokens are the whole group's.
    """
    config = config or TrainConfig()
    group = group or ReplicaGroup()
    group.check_batch_size(config.batch_size)
    encoded = [encode_example(tokenizer, example) for example in examples]
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_then_decay(optimizer, config.warmup_steps, config.steps, config.decay)
    order = ExampleOrder(len(encoded), config.seed)
    torch.manual_seed(config.seed)  # dropout, if the adapters use it

    start_step, losses = 0, list[float]()
    if resume_from is not None:
        start_step, losses = _restore(resume_from, config, params, optimizer, scheduler)

    result = TrainResult(steps=config.steps, losses=losses)
    was_training = model.training
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, desc="train", disable=not (config.progress and group.is_writer),
               file=sys.stderr)
    try:
        for step in range(start_step, config.steps):
            group.seed_step(config.seed, step)
            batches = [
                group.shard([encoded[i] for i in order.micro_batch(step * config.grad_accum + m, config.batch_size)])
                for m in range(config.grad_accum)
            ]
            loss, tokens = _optimizer_step(model, tokenizer, batches, config, params, optimizer, group)
            scheduler.step()
            result.losses.append(loss)
            result.tokens += tokens
            result.seconds = time.perf_counter() - started
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{result.tokens_per_second:.0f}")
            done = step + 1
            if config.output_dir and _checkpoint_due(done, config):
                state = _snapshot(done, result.losses, config, params, optimizer, scheduler)
                group.assert_replicas_identical(list(params.values()))
                target = checkpoint_dir(config.output_dir, done)
                group.write_on_writer(save_checkpoint, model, target, state)
                result.last_checkpoint = target
    finally:
        bar.close()
        model.train(was_training)
    result.seconds = time.perf_counter() - started
    return result


def _checkpoint_due(done: int, config: TrainConfig) -> bool:
    if not config.output_dir:
        return False
    return done == config.steps or bool(config.checkpoint_every and done % config.checkpoint_every == 0)


def _optimizer_step(model, tokenizer, batches: list[list[EncodedExample]], config: TrainConfig,
                    params: dict[str, nn.Parameter], optimizer, group: ReplicaGroup) -> tuple[float, int]:
    """Accumulate gradients over `batches` (this rank's share of each micro-batch), sum them
    over the group, then step; returns (mean token loss, tokens seen), both the group's."""
    side = "left" if config.trim_logits else "right"
    device = next(iter(params.values())).device
    collated = [collate_training(batch, tokenizer.pad_token_id, side) for batch in batches]
    # Each micro-batch's mean loss is weighted by its share of the step's predicted
    # tokens, over every rank, so accumulation and splitting give the same gradient
    # as one big batch.
    counts = [int((c["labels"][:, 1:] != IGNORE_INDEX).sum()) for c in collated]
    total = max(1, int(group.sum([sum(counts)])[0]))
    step_loss, tokens = 0.0, 0
    for batch, padded, count in zip(batches, collated, counts):
        inputs: dict[str, Any] = {key: value.to(device) for key, value in padded.items()}
        if config.trim_logits:
            # Left padding puts every response at the end; the logit before the
            # first response token is the last one the loss needs.
            keep = max(example.response_length for example in batch) + 1
            inputs.update(labels=inputs["labels"][:, -keep:], logits_to_keep=keep)
        output = model(**inputs)
        # A share with no predicted token (its mean loss is NaN) still runs forward and backward,
        # adding zero: with a sharded base every rank must take part in every all-gather.
        loss = output.loss * (count / total) if count else output.logits.sum() * 0.0
        loss.backward()
        step_loss += float(loss.detach())
        tokens += int(inputs["attention_mask"].sum())
    group.reduce_gradients(list(params.values()))
    step_loss, group_tokens = group.sum([step_loss, tokens])
    tokens = int(group_tokens)
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, tokens


def _snapshot(step, losses, config, params, optimizer, scheduler) -> dict:
    return {
        "step": step,
        "losses": list(losses),
        "settings": config.resume_key(),
        "trainable": {name: p.detach().clone() for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def _restore(resume_from, config: TrainConfig, params, optimizer, scheduler) -> tuple[int, list[float]]:
    if str(resume_from) == "latest":
        if not config.output_dir:
            raise CheckpointError("resume_from='latest' needs config.output_dir, the folder holding the checkpoints")
        found = latest_checkpoint(config.output_dir)
        if found is None:
            raise CheckpointError(f"no complete checkpoint in {config.output_dir}; train without resume_from first")
        resume_from = found
    state = load_checkpoint_state(resume_from)
    if state["settings"] != config.resume_key():
        changed = sorted(k for k in config.resume_key() if state["settings"].get(k) != config.resume_key()[k])
        raise CheckpointError(
            f"{resume_from} was written with different settings ({', '.join(changed)}); resume with the "
            f"same TrainConfig, or start a new run"
        )
    if set(state["trainable"]) != set(params):
        raise CheckpointError(
            f"{resume_from} holds trainable tensors {len(state['trainable'])} that do not match the model's "
            f"{len(params)}; resume on the same model with the same adapter config"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["losses"])
