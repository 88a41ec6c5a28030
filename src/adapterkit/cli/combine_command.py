"""`adapterkit combine`: a weighted combination of adapter folders, written as one adapter folder.

A thin shell over AdapterModel.add_weighted_adapter: load the base and each adapter, combine,
save the result (the folder's root adapter, PEFT's "default").
"""

from __future__ import annotations

import argparse

from adapterkit.errors import AdapterCombinationError

COMBINED = "default"  # the combined adapter is the root adapter of --out


def add_combine(parser: argparse.ArgumentParser) -> None:
    from adapterkit.core.combine import COMBINATION_TYPES, SIGN_METHODS

    parser.add_argument("--base", required=True, help="base model: 'smollm2', a local folder, or a hub id")
    parser.add_argument("--adapter", required=True, action="append", metavar="NAME=DIR",
                        help="an adapter to combine, named NAME (repeat the option for each adapter)")
    parser.add_argument("--weights", help="comma-separated weights, one per --adapter in order (default: all 1)")
    parser.add_argument("--type", default="svd", choices=COMBINATION_TYPES, help="combination type (default: svd)")
    parser.add_argument("--density", type=float, help="fraction of entries kept, for ties / dare / magnitude_prune")
    parser.add_argument("--sign-method", default="total", choices=SIGN_METHODS,
                        help="TIES sign election (default: total)")
    parser.add_argument("--svd-rank", type=int, help="rank of the result for the *svd types (default: the largest)")
    parser.add_argument("--out", required=True, help="folder for the combined adapter")


def parse_adapters(specs: list[str]) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise AdapterCombinationError(f"--adapter {spec!r} is not NAME=DIR; write e.g. --adapter math=out/math.")
        if name == COMBINED:
            raise AdapterCombinationError(
                f"--adapter name {COMBINED!r} is reserved for the combined adapter; pick another NAME.")
        if name in adapters:
            raise AdapterCombinationError(f"--adapter name {name!r} is given twice; names must differ.")
        adapters[name] = folder
    return adapters


def parse_weights(text: str | None, count: int) -> list[float]:
    if text is None:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise AdapterCombinationError(f"--weights {text!r} must be comma-separated numbers, e.g. 1,0.5.") from None
    if len(weights) != count:
        raise AdapterCombinationError(f"--weights gives {len(weights)} number(s) for {count} --adapter(s).")
    return weights


def run_combine(args) -> int:
    from adapterkit.hf import load_base
    from adapterkit.model.adapter_model import AdapterModel
    from adapterkit.model.combine import check_options

    adapters = parse_adapters(args.adapter)
    weights = parse_weights(args.weights, len(adapters))  # every argument is checked before loading anything
    if len(adapters) > 1:  # with one adapter every type is "linear", as in PEFT
        check_options(args.type, args.density, args.sign_method, args.svd_rank)
    base, _ = load_base(args.base)
    model = AdapterModel(base)
    for name, folder in adapters.items():
        model.load_adapter(folder, adapter_name=name)
    model.add_weighted_adapter(list(adapters), weights, COMBINED, combination_type=args.type,
                               svd_rank=args.svd_rank, density=args.density,
                               majority_sign_method=args.sign_method)
    out = model.save_pretrained(args.out, selected_adapters=[COMBINED])
    config = model.peft_config[COMBINED]
    print(f"combined {', '.join(f'{n}×{w:g}' for n, w in zip(adapters, weights))} ({args.type}, rank {config.r}) "
          f"-> {out}")
    return 0
