"""`adapterkit demo`: argument wiring for demo.story.run_demo."""

from __future__ import annotations

import argparse


def add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the same story with fewer steps and examples (for tests)")
    parser.add_argument("--workdir", help="where adapters and the merged model go (default: a new temp folder)")


def run_demo(args) -> int:
    from adapterkit.demo.story import run_demo as story

    result = story(quick=args.quick, workdir=args.workdir)
    return 0 if all(result.checks.values()) else 1
