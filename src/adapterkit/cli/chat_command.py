"""`adapterkit chat`: talk to a base and its adapters, switching with /adapter NAME and /base."""

from __future__ import annotations

import argparse
import sys

from adapterkit.cli.model_args import add_model, add_sampling, add_threads


def add_chat(parser: argparse.ArgumentParser) -> None:
    add_model(parser, many=True)
    add_sampling(parser, max_tokens=128)
    add_threads(parser)
    parser.epilog = "Reads one message per line from stdin (a terminal or a pipe); /help lists the commands."


def run_chat(args) -> int:
    from adapterkit.generation import ChatSession, SamplingSettings, load_model, resolve_sources
    from adapterkit.generation import run_chat as chat_loop
    from adapterkit.threads import configure_threads

    settings = SamplingSettings(max_new_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    sources = resolve_sources(args.adapter, args.store)  # checked before the slow load
    configure_threads(args.threads)
    model, tokenizer = load_model(args.base, sources, args.store)
    session = ChatSession(model, tokenizer, settings, sources, store_root=args.store)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {session.label}; /help lists the commands, /quit leaves", file=sys.stderr)
    return chat_loop(session, sys.stdin, sys.stdout, sys.stderr, prompt=interactive)
