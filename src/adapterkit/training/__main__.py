"""`python -m adapterkit.training ARGS`: `adapterkit train ARGS`, for torchrun.

    torchrun --nproc-per-node 2 -m adapterkit.training -- --base B --data D --output OUT

(The `--` keeps torchrun from reading `--r 8` or `--nproc` as abbreviations of its
own options; torchrun drops it. One given to `python -m` directly is dropped too.)

Each worker joins the process group torchrun describes (gloo on CPU, NCCL on CUDA),
trains on its share of every batch, and rank 0 writes the adapter. This file is an
entry point like the `adapterkit` command, so it reaches out to the CLI's argument
wiring (one owner for the arguments); nothing imports it.
"""

from __future__ import annotations

import sys

from adapterkit.cli.main import main


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return main(["train", *(argv[1:] if argv[:1] == ["--"] else argv)])


if __name__ == "__main__":
    sys.exit(run())
