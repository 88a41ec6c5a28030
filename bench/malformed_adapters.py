"""Malformed-adapter campaign: the figures for issue 8's closing note.

    python -m bench.malformed_adapters [--seed N] [--show N]

Runs the seeded generator of tests/malformed_adapters.py (the one the test suite asserts on)
and prints, for the whole corpus: variants tried, untyped errors, state changes after a
failure, silent loads of bad values, and the other judgements (wrong loads, verify
disagreeing with load_adapter, inspect wrong, CLI failures not exactly one stderr line).
Targets: all zero but the variant count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the generator and tiny models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=20, help="failures to list, if any")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from malformed_adapters import run_all

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adapterkit-malformed-") as root:
        figures = run_all(Path(root), seed=args.seed)
    elapsed = time.perf_counter() - started
    summary = figures.summary()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print("per family: " + ", ".join(f"{family} {count}" for family, count in sorted(figures.by_family.items())))
    print(f"seed {args.seed}, {elapsed:.1f} s on {torch.get_num_threads()} thread(s)")
    for line in figures.failures[: args.show]:
        print("  " + line)
    bad = sum(v for k, v in summary.items() if k != "variants")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
