"""Arguments shared by the commands that run a model: base, adapters, sampling, threads."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: $OMP_NUM_THREADS, else one per core this process may use)")


def add_model(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument("--base", default="smollm2", help="base model: 'smollm2' (default), a local folder, or a hub id")
    if many:
        parser.add_argument("--adapter", action="append", default=[], metavar="DIR|REF",
                            help="adapter folder or store ref (name@prod); repeat to load several, the first answers")
    else:
        parser.add_argument("--adapter", metavar="DIR|REF",
                            help="adapter folder or store ref such as name@prod (default: the base alone)")
    parser.add_argument("--store", metavar="ROOT",
                        help="store holding the refs (default: $ADAPTERKIT_HOME/store or ~/.cache/adapterkit/store)")


def add_sampling(parser: argparse.ArgumentParser, max_tokens: int = 64) -> None:
    parser.add_argument("--max-tokens", type=positive_int, default=max_tokens,
                        help=f"most new tokens per reply (default {max_tokens})")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default), >0 to sample")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling, so a sampled reply repeats")
