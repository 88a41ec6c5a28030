"""`inspect`, `verify`, `merge`, `convert`: argument wiring and printing only."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

console = Console()


def add_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="adapter folder (holds adapter_config.json)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_inspect(args) -> int:
    from adapterkit.ops.inspect import inspect_adapter

    summary = inspect_adapter(args.folder)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
        return 0
    for item in [summary, *summary.sub_adapters]:
        table = Table(title=f"adapter {item.folder}", show_header=False)
        rows = [
            ("type", item.peft_type), ("rank", str(item.rank)), ("alpha", str(item.lora_alpha)),
            ("rsLoRA", str(item.use_rslora)), ("targets", str(item.target_modules)),
            ("modules_to_save", str(item.modules_to_save)), ("rank/alpha patterns", f"{item.rank_pattern} / {item.alpha_pattern}"),
            ("adapted modules", str(item.adapted_modules)), ("parameters", f"{item.parameters:,d}"),
            ("file", f"{item.weights_file} ({item.weights_bytes:,d} bytes)"), ("sha256", item.weights_sha256),
            ("base", f"{item.base_name or 'unknown'} (fingerprint {item.base_fingerprint or 'not recorded'})"),
        ]
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
    if summary.sub_adapters:
        names = ", ".join(s.folder.rstrip("/").rsplit("/", 1)[-1] for s in summary.sub_adapters)
        console.print(f"sub-adapters: {names}")
    return 0


def add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="adapter folder to check")
    parser.add_argument("--base", required=True, help="base model: 'smollm2', a local transformers folder, or a hub id")


def run_verify(args) -> int:
    from adapterkit.hf import load_base
    from adapterkit.ops.verify import verify_adapter

    model, _ = load_base(args.base)
    report = verify_adapter(args.folder, model)
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    for problem in report.problems:
        console.print(f"[red]mismatch[/]: {problem}")
    if report.ok:
        console.print(f"[green]ok[/]: {args.folder} fits {args.base} ({report.checked_tensors} tensors checked)")
        return 0
    console.print(f"[red]{len(report.problems)} problem(s)[/]: {args.folder} does not fit {args.base}")
    return 1


def add_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: 'smollm2', a local folder, or a hub id")
    parser.add_argument("--adapter", required=True, help="adapter folder")
    parser.add_argument("--out", required=True, help="folder for the merged transformers model")


def run_merge(args) -> int:
    from adapterkit.hf import load_base
    from adapterkit.model.adapter_model import AdapterModel
    from adapterkit.ops.merge import export_merged

    base, tokenizer = load_base(args.base)
    model = AdapterModel.from_pretrained(base, args.adapter)
    out = export_merged(model, args.out, tokenizer=tokenizer)
    console.print(f"merged model written to {out} (loads with transformers alone)")
    return 0


def add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="adapter folder holding a legacy adapter_model.bin")
    parser.add_argument("--delete-bin", action="store_true", help="remove the .bin after converting")


def run_convert(args) -> int:
    from adapterkit.ops.convert import convert_folder

    for target in convert_folder(args.folder, delete_bin=args.delete_bin):
        console.print(f"wrote {target}")
    return 0
