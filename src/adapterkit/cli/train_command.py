"""`adapterkit train`: argument wiring for training.train."""

from __future__ import annotations

import argparse

from adapterkit.cli.model_args import add_threads


def add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="smollm2", help="base model: 'smollm2' (default), a local folder, or a hub id")
    parser.add_argument("--data", required=True, help='JSONL file of {"prompt", "response"} or {"messages": [...]}')
    parser.add_argument("--eval-data", help="held-out JSONL for exact-match evaluation after training")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj",
                        help="comma-separated module names, or 'all-linear' (default: attention projections)")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--alpha", type=float, default=16, help="LoRA alpha (default 16)")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, order and dropout (default 0)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: final only)")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in --output")
    parser.add_argument("--output", required=True, help="folder for the adapter; checkpoints go beside it, in OUTPUT-checkpoints/")
    parser.add_argument("--nproc", type=int, default=1,
                        help="training processes on this machine (torch.distributed: gloo on CPU, NCCL on GPU); "
                             "each trains on its share of every batch (default 1)")
    parser.add_argument("--shard-base", action="store_true",
                        help="with several processes: shard the frozen base across them (FSDP2); adapters stay whole")
    add_threads(parser)


def checkpoints_for(output):
    """Beside the adapter, not inside it: the final save replaces the adapter folder whole."""
    return output.with_name(output.name + "-checkpoints")


def run_train(args) -> int:
    from adapterkit.errors import DistributedTrainingError
    from adapterkit.training.distributed import ReplicaGroup, launched_by_torchrun

    if args.nproc < 1 or (args.shard_base and args.nproc < 2 and not launched_by_torchrun()):
        raise DistributedTrainingError(f"--nproc {args.nproc}: give 1 or more processes, and 2 or more with --shard-base")
    if args.nproc > 1 and not launched_by_torchrun():
        from adapterkit.cli.train_launch import launch_workers, worker_argv
        from adapterkit.training.data import load_jsonl

        load_jsonl(args.data)  # refuse bad data and batch sizes before starting any process
        ReplicaGroup(0, args.nproc).check_batch_size(args.batch_size)
        return launch_workers(args.nproc, worker_argv(args, add_train))
    group = ReplicaGroup.from_environment()  # one process unless torchrun started this one
    try:
        status = _train_in_group(args, group)
        group.wait_for_all()
        return status
    finally:
        group.close()


def _train_in_group(args, group) -> int:
    from pathlib import Path

    import torch

    from adapterkit.core.config import LoraConfig
    from adapterkit.hf import load_base
    from adapterkit.model.adapter_model import get_peft_model
    from adapterkit.threads import configure_threads
    from adapterkit.training.data import load_jsonl
    from adapterkit.training.evaluate import exact_match
    from adapterkit.training.trainer import TrainConfig, train

    examples = load_jsonl(args.data)  # validate the data before the slow model load
    held_out = load_jsonl(args.eval_data) if args.eval_data else None
    threads = configure_threads(args.threads)  # once, before the first torch op
    torch.manual_seed(args.seed)
    base, tokenizer = load_base(args.base)
    targets = args.targets if args.targets == "all-linear" else [t.strip() for t in args.targets.split(",") if t.strip()]
    model = get_peft_model(base, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                            target_modules=targets, task_type="CAUSAL_LM"))
    model.to(group.device)
    if args.shard_base:
        from adapterkit.training.fsdp import shard_base

        shard_base(model, group)
    if group.is_writer:
        model.print_trainable_parameters()
    output = Path(args.output)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         seed=args.seed, output_dir=str(checkpoints_for(output)),
                         checkpoint_every=args.checkpoint_every)
    result = train(model, tokenizer, examples, config, resume_from="latest" if args.resume else None, group=group)
    if group.distributed:  # never save one rank's shard, an empty tensor, or one rank's drift
        from adapterkit.training.fsdp import adapter_parameters, check_adapter_whole

        check_adapter_whole(model)
        group.assert_replicas_identical(adapter_parameters(model))
    group.write_on_writer(model.save_pretrained, output)
    if not group.is_writer:
        if held_out:  # a sharded base needs every rank in each forward; only rank 0 prints
            exact_match(model, tokenizer, held_out)
        return 0
    print(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s "
          f"on {threads} thread{'s' if threads > 1 else ''}), "
          f"final loss {result.losses[-1]:.4f}; adapter saved to {output}")
    if held_out:
        scored = exact_match(model, tokenizer, held_out)
        print(f"held-out exact match: {scored.correct}/{scored.total} = {100 * scored.exact_match:.1f}%")
    return 0
