"""`adapterkit eval`: held-out exact match of a base with an adapter, by the trainer's own evaluation."""

from __future__ import annotations

import argparse
import json

from adapterkit.cli.model_args import add_model, add_threads, positive_int


def add_eval(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--data", required=True, help='held-out JSONL of {"prompt", "response"} or {"messages": [...]}')
    parser.add_argument("--max-tokens", type=positive_int, default=16, help="most new tokens per reply (default 16)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per generate call (default 32)")
    parser.add_argument("--json", action="store_true", help="print the score as JSON")
    add_threads(parser)


def run_eval(args) -> int:
    from adapterkit.generation import load_model, resolve_sources
    from adapterkit.threads import configure_threads
    from adapterkit.training import TrainingDataError, exact_match, load_jsonl

    examples = load_jsonl(args.data)
    if not examples:
        raise TrainingDataError(f"{args.data} holds no examples; add one JSON object per line")
    sources = resolve_sources([args.adapter] if args.adapter else [], args.store)  # checked before the slow load
    configure_threads(args.threads)
    model, tokenizer = load_model(args.base, sources, args.store)
    scored = exact_match(model, tokenizer, examples, max_new_tokens=args.max_tokens, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"base": args.base, "adapter": args.adapter, "data": args.data, "correct": scored.correct,
                          "total": scored.total, "exact_match": scored.exact_match}, sort_keys=True))
    else:
        print(f"exact match: {scored.correct}/{scored.total} = {100 * scored.exact_match:.1f}%")
    return 0
