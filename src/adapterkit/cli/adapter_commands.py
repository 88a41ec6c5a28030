"""`inspect`, `verify`, `merge`, `convert`: argument wiring and printing only.

A failure is one line on stderr and a non-zero exit: warnings raised on the way (an unknown
config field, say) are shown only when the command succeeds, so they never add lines to an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


NONFINITE_HELP = "accept NaN / inf values and scales (they poison every output; for debugging a broken adapter)"


@contextlib.contextmanager
def warnings_after_success():
    """Hold back warnings while the command runs; print them (one line each, to stderr) only if it succeeds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"warning: {str(warning.message).splitlines()[0]}", file=sys.stderr)


def quiet_transformers() -> None:
    """transformers draws progress bars on stderr while loading a base; a command's stderr is for errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def add_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="adapter folder (holds adapter_config.json)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--allow-nonfinite", action="store_true", help=NONFINITE_HELP)


def run_inspect(args) -> int:
    from adapterkit.ops.inspect import inspect_adapter

    with warnings_after_success():
        summary = inspect_adapter(args.folder, allow_nonfinite=args.allow_nonfinite)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
        return 0
    for item in [summary, *summary.sub_adapters]:
        table = Table(title=escape(f"adapter {item.folder}"), show_header=False)
        rows = [
            ("type", item.peft_type), ("rank", str(item.rank)), ("alpha", str(item.lora_alpha)),
            ("rsLoRA", str(item.use_rslora)), ("variant", f"{item.variant} (use_dora={item.use_dora})"),
            ("targets", str(item.target_modules)),
            ("modules_to_save", str(item.modules_to_save)), ("rank/alpha patterns", f"{item.rank_pattern} / {item.alpha_pattern}"),
            ("adapted modules", str(item.adapted_modules)), ("parameters", f"{item.parameters:,d}"),
            ("file", f"{item.weights_file} ({item.weights_bytes:,d} bytes)"), ("sha256", item.weights_sha256),
            ("base", f"{item.base_name or 'unknown'} (fingerprint {item.base_fingerprint or 'not recorded'})"),
        ]
        for key, value in rows:
            table.add_row(key, escape(value))  # values are user text: "[a-z]" is not rich markup
        console.print(table)
    if summary.sub_adapters:
        names = ", ".join(s.folder.rstrip("/").rsplit("/", 1)[-1] for s in summary.sub_adapters)
        console.print(f"sub-adapters: {names}")
    return 0


def add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="adapter folder to check")
    parser.add_argument("--base", required=True, help="base model: 'smollm2', a local transformers folder, or a hub id")
    parser.add_argument("--allow-other-base", action="store_true",
                        help="report a base other than the recorded one as a warning, not a problem")
    parser.add_argument("--allow-nonfinite", action="store_true", help=NONFINITE_HELP)


def run_verify(args) -> int:
    """Every problem on stdout, one per line; then one line on stderr and exit 1 if there was any."""
    from adapterkit.hf import load_base
    from adapterkit.ops.verify import verify_adapter

    quiet_transformers()
    with warnings_after_success():
        model, _ = load_base(args.base)
    report = verify_adapter(args.folder, model, strict_base=not args.allow_other_base,
                            allow_nonfinite=args.allow_nonfinite)
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.ok:
        print(f"ok: {args.folder} fits {args.base} ({report.checked_tensors} tensors checked)")
        return 0
    first = str(report.error).strip().splitlines()[0]
    print(f"adapterkit verify: {args.folder} does not fit {args.base}: {len(report.problems)} problem(s); "
          f"first: {first}", file=sys.stderr)
    return 1


def add_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: 'smollm2', a local folder, or a hub id")
    parser.add_argument("--adapter", required=True, help="adapter folder")
    parser.add_argument("--out", required=True, help="folder for the merged transformers model")
    parser.add_argument("--allow-nonfinite", action="store_true", help=NONFINITE_HELP)


def run_merge(args) -> int:
    from adapterkit.hf import load_base
    from adapterkit.model.adapter_model import AdapterModel
    from adapterkit.ops.merge import export_merged

    quiet_transformers()
    base, tokenizer = load_base(args.base)
    model = AdapterModel.from_pretrained(base, args.adapter, allow_nonfinite=args.allow_nonfinite)
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
