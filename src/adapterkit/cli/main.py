"""Entry point of the `adapterkit` command.

Subcommands are one table; each row names its argument wiring and its runner,
and runners import what they need lazily so `adapterkit --help` stays instant.
Bad input ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# name -> (help, module, add_arguments, run)
COMMANDS = {
    "demo": ("train two adapters on the embedded SmolLM2 and show the whole workflow",
             "adapterkit.cli.demo_command", "add_demo", "run_demo"),
    "train": ("train a LoRA adapter on JSONL data", "adapterkit.cli.train_command", "add_train", "run_train"),
    "generate": ("one reply from a base with an adapter (folder or store ref)",
                 "adapterkit.cli.generate_command", "add_generate", "run_generate"),
    "chat": ("chat with a base and its adapters, streaming; switch with /adapter NAME or /base",
             "adapterkit.cli.chat_command", "add_chat", "run_chat"),
    "eval": ("held-out exact match of a base with an adapter", "adapterkit.cli.eval_command", "add_eval", "run_eval"),
    "inspect": ("describe an adapter folder", "adapterkit.cli.adapter_commands", "add_inspect", "run_inspect"),
    "verify": ("check an adapter against a base model and report every mismatch",
               "adapterkit.cli.adapter_commands", "add_verify", "run_verify"),
    "merge": ("export base + adapter as one transformers model folder",
              "adapterkit.cli.adapter_commands", "add_merge", "run_merge"),
    "convert": ("convert a legacy adapter_model.bin to safetensors",
                "adapterkit.cli.adapter_commands", "add_convert", "run_convert"),
    "combine": ("combine adapters by weight (linear, cat, svd, ties, dare, ...) into one adapter folder",
                "adapterkit.cli.combine_command", "add_combine", "run_combine"),
    "check": ("tell whether a serving engine (vLLM) will load an adapter folder, and how to fix it",
              "adapterkit.cli.vllm_commands", "add_check", "run_check"),
    "export": ("write an adapter folder a serving engine (vLLM) loads, if a lossless conversion exists",
               "adapterkit.cli.vllm_commands", "add_export", "run_export"),
    "serve": ("serve adapters over one base: an OpenAI-compatible HTTP server",
              "adapterkit.cli.serve_command", "add_serve", "run_serve"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line too: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def package_version() -> str:
    """The installed distribution's version: one owner, pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adapterkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed; pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="adapterkit", description="LoRA adapters on frozen models, in PEFT's format.")
    parser.add_argument("--version", action="version", version=f"adapterkit {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, module, add_name, run_name) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        getattr(mod, add_name)(command)
        command.set_defaults(run=getattr(mod, run_name))
    from adapterkit.cli.store_commands import add_store_parser

    add_store_parser(sub)  # a group of its own: store ls|put|get|...
    return parser


def main(argv: list[str] | None = None) -> int:
    from adapterkit.errors import AdapterError
    from adapterkit.threads import prefer_sleeping_threads

    prefer_sleeping_threads()  # before anything imports torch: OpenMP reads it once, at load
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("adapterkit: interrupted", file=sys.stderr)
        return 130
    except (AdapterError, OSError, ValueError, KeyError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"adapterkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
