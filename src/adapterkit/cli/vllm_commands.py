"""`adapterkit check --for vllm` and `adapterkit export --for vllm`: argument wiring and printing."""

from __future__ import annotations

import argparse

TARGETS = ("vllm",)  # the engines `--for` knows; one today


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--for", dest="engine", required=True, choices=TARGETS, help="the serving engine (vllm 0.33)")
    parser.add_argument("--max-lora-rank", type=int, default=None,
                        help="the server's --max-lora-rank: one of 1, 8, 16, 32, 64, 128, 256, 320, 512 "
                             "(check: default 16, vLLM's default; export: any rank vLLM can serve)")


def add_check(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)
    parser.add_argument("folder", help="PEFT adapter folder")


def run_check(args) -> int:
    from adapterkit.integrations.vllm.rules import DEFAULT_MAX_LORA_RANK, VLLM_VERSION, check_for_vllm

    verdict = check_for_vllm(args.folder, DEFAULT_MAX_LORA_RANK if args.max_lora_rank is None else args.max_lora_rank)
    if verdict.ok:
        print(f"ok: vLLM {VLLM_VERSION} loads {args.folder} with --max-lora-rank {verdict.max_lora_rank} "
              f"(rank {verdict.rank})")
        return 0
    for finding in verdict.findings:
        print(f"refused: {finding}")
    print(f"{len(verdict.findings)} problem(s): vLLM {VLLM_VERSION} would refuse {args.folder}")
    return 1


def add_export(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)
    parser.add_argument("source", help="PEFT adapter folder to convert")
    parser.add_argument("out", help="new folder to write")


def run_export(args) -> int:
    from adapterkit.integrations.vllm.export import export_for_vllm

    exported = export_for_vllm(args.source, args.out, args.max_lora_rank)
    for change in exported.changes:
        print(f"converted: {change}")
    print(f"wrote {exported.folder}: vLLM loads it with --max-lora-rank {exported.max_lora_rank} or more "
          f"(rank {exported.rank})")
    return 0
