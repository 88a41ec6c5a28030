"""Adapter store at scale: does it stay fast with 10,000 adapters, and how much does it save?

Two parts, written to bench/results/store.json and printed as a table:

  scale   fill a store with small PEFT folders in steps up to --count versions; at each
          step time `ls` (every version, API and the CLI's table), and put/get of fresh
          adapters (median of --samples), so put/get cost can be read against the count.
  real    adapters trained-shape on SmolLM2-135M (random weights, rank 8 on q/v,
          put straight from the model so the base size is recorded): `du` reports bytes
          stored against folder copies and full model copies, with a re-put of each
          adapter (a promotion, a re-import) to show deduplication.

    .venv/bin/python -m bench.bench_store [--count 10000] [--samples 25] [--real 12]

Timings are ratios to read, not pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from adapterkit.store import AdapterStore

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"


def write_folder(folder: Path, seed: int, r: int = 4, hidden: int = 32, layers: int = 2) -> Path:
    """A small PEFT LoRA folder (config + safetensors with PEFT keys); each seed gives new weights."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for target in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((r, hidden), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((hidden, r), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
              "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, sort_keys=True))
    return folder


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 3)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scale(work: Path, count: int, samples: int) -> list[dict]:
    from adapterkit.cli.store_commands import main as store_cli

    root = work / "scale-store"
    measured = AdapterStore(root)  # durable: fsync blobs and index, as users get it
    filler = AdapterStore(root, durable=False)  # fills faster; same files, same index
    sources = work / "sources"
    steps = sorted({0, *(s for s in (100, 1000, 2500, 5000, 10000, 20000) if s < count), count})
    rng = random.Random(0)
    seed = 0
    rows = []
    stored = 0
    for step in steps:
        fill_start = time.perf_counter()
        while stored < step:
            seed += 1
            folder = write_folder(sources / f"f{seed}", seed)
            filler.put_folder(folder, f"adapter-{stored % (count // 4 + 1):05d}", metadata={"seed": seed})
            shutil.rmtree(folder)
            stored += 1
        fill_s = time.perf_counter() - fill_start

        puts = []
        for _ in range(samples):
            seed += 1
            folder = write_folder(sources / f"f{seed}", seed)
            puts.append(_timed(lambda: measured.put_folder(folder, "probe", metadata={"seed": seed})))
            shutil.rmtree(folder)
        refs = [r.ref for r in measured.ls()]
        gets = []
        for i in range(samples):
            ref = rng.choice(refs)
            out = work / "out" / f"{step}-{i}"
            gets.append(_timed(lambda: measured.get(ref, out)))
        shutil.rmtree(work / "out")
        total = len(refs)
        ls_api = [_timed(measured.ls) for _ in range(3)]
        ls_latest = [_timed(lambda: measured.ls(latest_only=True)) for _ in range(3)]
        with contextlib.redirect_stdout(io.StringIO()):
            ls_table = [_timed(lambda: store_cli(["store", "--root", str(root), "ls"])) for _ in range(2)]
            ls_json = [_timed(lambda: store_cli(["store", "--root", str(root), "ls", "--json"])) for _ in range(2)]
        row = {
            "versions": total, "fill_s": round(fill_s, 2),
            "put_ms_median": _median_ms(puts), "get_ms_median": _median_ms(gets),
            "ls_api_ms": _median_ms(ls_api), "ls_latest_api_ms": _median_ms(ls_latest),
            "ls_cli_table_ms": _median_ms(ls_table), "ls_cli_json_ms": _median_ms(ls_json),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows[-1].update(_cli_process_times(root))
    verify_s = _timed(measured.verify)
    rows[-1]["verify_s"] = round(verify_s, 3)
    rows[-1]["gc_s"] = round(_timed(lambda: measured.gc(grace_s=0)), 3)
    return rows


def _cli_process_times(root: Path) -> dict:
    """Whole `adapterkit store ls` processes: interpreter start and package import included."""
    import subprocess

    import adapterkit

    env = {**os.environ, "PYTHONPATH": str(Path(adapterkit.__file__).resolve().parents[1])}

    def run(*argv: str) -> float:
        return _timed(lambda: subprocess.run([sys.executable, *argv], env=env, check=True,
                                             stdout=subprocess.DEVNULL))

    import_only = [run("-c", "import adapterkit.cli.main") for _ in range(2)]
    ls_process = [run("-m", "adapterkit.cli.main", "store", "--root", str(root), "ls") for _ in range(2)]
    return {"cli_process_import_only_ms": _median_ms(import_only), "cli_process_ls_ms": _median_ms(ls_process)}


def real(work: Path, adapters: int) -> dict:
    import torch

    from adapterkit import LoraConfig, get_peft_model
    from bench.common import build_base

    store = AdapterStore(work / "real-store")
    model = get_peft_model(build_base("smollm2-135m"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), adapter_name="a0")
    put_s = []
    for i in range(adapters):
        name = f"a{i}"
        if i:
            model.add_adapter(name, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(i)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith(f"lora_B.{name}"):
                    param.normal_(std=0.01)
        put_s.append(_timed(lambda: store.put(model, f"task-{i}", adapter_name=name)))
        if i:
            model.delete_adapter(name)
    first_pass = store.du()
    # Re-put every adapter unchanged (a re-import, a retrain that converged to the same file):
    for record in store.ls():
        out = work / "reput" / record.name
        store.get(record.ref, out)
        store.put(out, record.name)
    usage = store.du()
    return {
        "adapters": adapters, "versions": usage.versions,
        "adapter_bytes_each": first_pass.stored_bytes // adapters,
        "base_bytes": usage.full_copy_bytes // usage.versions_with_known_base if usage.full_copy_bytes else None,
        "put_from_model_ms_median": _median_ms(put_s),
        "stored_bytes": usage.stored_bytes, "folder_copies_bytes": usage.logical_bytes,
        "full_model_copies_bytes": usage.full_copy_bytes,
        "dedupe_ratio": round(usage.dedupe_ratio, 3),
        "dedupe_ratio_unique_adapters": round(first_pass.dedupe_ratio, 4),
        "full_copies_over_stored": round(usage.savings_vs_full_copies or 0, 1),
    }


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="adapter store: cost against the number of stored versions")
    columns = ["versions", "put_ms_median", "get_ms_median", "ls_api_ms", "ls_cli_table_ms", "ls_cli_json_ms"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["scale"]:
        table.add_row(*(f"{row[c]:,}" if isinstance(row[c], int) else f"{row[c]:.2f}" for c in columns))
    first, last = result["scale"][0], result["scale"][-1]
    console.print(table)
    console.print(
        f"put at {last['versions']:,} / put at {first['versions']:,}: "
        f"{last['put_ms_median'] / first['put_ms_median']:.2f}x; get: {last['get_ms_median'] / first['get_ms_median']:.2f}x; "
        f"verify {last.get('verify_s')} s, gc {last.get('gc_s')} s at {last['versions']:,}"
    )
    console.print(
        f"whole `adapterkit store ls` process at {last['versions']:,}: {last['cli_process_ls_ms']:.0f} ms, "
        f"of which starting Python and importing adapterkit: {last['cli_process_import_only_ms']:.0f} ms"
    )
    if result.get("real"):
        real_ = result["real"]
        table = Table(title=f"du on real SmolLM2-135M-shaped adapters (rank 8, q/v): {real_['versions']} versions")
        table.add_column("what")
        table.add_column("bytes", justify="right")
        table.add_row("stored", f"{real_['stored_bytes']:,}")
        table.add_row(f"as folder copies ({real_['dedupe_ratio']}x dedupe)", f"{real_['folder_copies_bytes']:,}")
        table.add_row(f"as full model copies ({real_['full_copies_over_stored']}x stored)",
                      f"{real_['full_model_copies_bytes']:,}")
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="versions in the store at the last step")
    parser.add_argument("--samples", type=int, default=25, help="puts and gets timed at each step")
    parser.add_argument("--real", type=int, default=12, help="real SmolLM2-shaped adapters for du (0 skips)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        result = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "scale": scale(work, args.count, args.samples),
            "real": real(work, args.real) if args.real else None,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_tables(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
