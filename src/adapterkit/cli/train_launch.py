"""`adapterkit train --nproc N`: start N training processes with torch.distributed's launcher.

This is `torchrun --standalone --nproc-per-node N -m adapterkit.training -- <the
same arguments>`, called through `torch.distributed.run` itself (rendezvous on a
free local port, workers' output passed through, a failed worker stops the others),
so the two ways of launching run the same code.

The `--` matters: torchrun's parser accepts abbreviations of its own options, so
without it `--r 8` is refused as ambiguous (--rdzv-*, --role, ...) and `--nproc 2`
is taken as its `--nproc-per-node`.
"""

from __future__ import annotations

import argparse

from adapterkit.errors import DistributedTrainingError

WORKER_MODULE = "adapterkit.training"  # its __main__ takes the arguments of `adapterkit train`


def worker_argv(args: argparse.Namespace, add_arguments) -> list[str]:
    """The command line that parses back to `args` under the parser `add_arguments` builds."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "nproc"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def launch_workers(nproc: int, argv: list[str]) -> int:
    """Run `python -m adapterkit.training ARGV` in `nproc` processes; 0 when all succeed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launcher_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", WORKER_MODULE, "--", *argv]
    )
    try:
        run(launcher_args)
    except ChildFailedError as failed:
        ranks = ", ".join(f"rank {rank} (exit code {err.exitcode})" for rank, err in sorted(failed.failures.items()))
        raise DistributedTrainingError(
            f"{len(failed.failures)} of {nproc} training processes failed: {ranks}; their own errors are printed above"
        ) from None
    return 0
