"""`adapterkit generate`: one reply from a base with an adapter (folder or store ref)."""

from __future__ import annotations

import argparse

from adapterkit.cli.model_args import add_model, add_sampling, add_threads


def add_generate(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("prompt", help="the user message (sent through the tokenizer's chat template when it has one)")
    add_sampling(parser)
    add_threads(parser)


def run_generate(args) -> int:
    from adapterkit.generation import SamplingSettings, generate_text, load_model, resolve_sources
    from adapterkit.threads import configure_threads

    settings = SamplingSettings(max_new_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    sources = resolve_sources([args.adapter] if args.adapter else [], args.store)  # checked before the slow load
    configure_threads(args.threads)
    model, tokenizer = load_model(args.base, sources, args.store)
    print(generate_text(model, tokenizer, [{"role": "user", "content": args.prompt}], settings))
    return 0
