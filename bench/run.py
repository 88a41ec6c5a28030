"""`make bench`: throughput with many adapters per batch, many resident adapters, the server under load.

    python -m bench.run            # default profile, bounded (~20 min on 2 cores)
    python -m bench.run --quick    # a few minutes: fewer ranks, k and repeats
    python -m bench.run --full     # the whole matrix of issue 4 (hours on 2 cores)

Writes bench/results/{results.json, REPORT.md, time_vs_adapters.png} and, for the server,
bench/results/{serve.json, SERVE.md} (bench/serve.py; also `python -m bench.serve`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

KS = [1, 2, 4, 8, 16, 32]
# (shape, mode, batch, length, ranks, ks, repeats) per profile.
PROFILES = {
    "quick": {
        "throughput": [
            ("smollm2-135m", "decode", 32, 256, [16], [1, 4, 32], 3),
            ("smollm2-135m", "prefill", 4, 128, [16], [1, 4], 2),
            ("qwen2-0.5b", "decode", 32, 256, [16], [1, 32], 2),
        ],
        "resident_counts": [1, 10, 100],
        "peft_budget_s": 60,
    },
    "default": {
        "throughput": [
            ("smollm2-135m", "decode", 32, 256, [8, 16, 64], KS, 5),
            ("qwen2-0.5b", "decode", 32, 256, [16], [1, 4, 32], 3),
            ("smollm2-135m", "prefill", 8, 128, [16], [1, 8], 2),
            ("qwen2-0.5b", "prefill", 4, 128, [16], [1, 4], 2),
        ],
        "resident_counts": [1, 100, 1000],
        "peft_budget_s": 240,
    },
    "full": {
        "throughput": [
            ("smollm2-135m", "decode", 32, 256, [8, 16, 64], KS, 7),
            ("qwen2-0.5b", "decode", 32, 256, [8, 16, 64], KS, 5),
            ("smollm2-135m", "prefill", 32, 128, [8, 16, 64], KS, 3),
            ("qwen2-0.5b", "prefill", 32, 128, [8, 16, 64], KS, 3),
        ],
        "resident_counts": [1, 100, 1000],
        "peft_budget_s": 1800,
    },
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _resident(counts: list[int], peft_budget_s: float, threads: int) -> tuple[dict, str]:
    from bench.resident import TARGETS, make_adapter_folder

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_adapter_folder("smollm2-135m", 8, Path(tmp) / "adapter")
        for lib, budget in (("ours", 1e9), ("peft", peft_budget_s)):
            out = Path(tmp) / f"{lib}.json"
            log(f"resident: {lib}, up to {max(counts)} adapters")
            subprocess.run([sys.executable, "-m", "bench.resident", "--lib", lib, "--folder", str(folder),
                            "--counts", ",".join(map(str, counts)), "--budget-s", str(budget),
                            "--threads", str(threads), "--out", str(out)],
                           check=True, cwd=Path(__file__).parent.parent)
            results["adapterkit" if lib == "ours" else "peft"] = json.loads(out.read_text())
    note = (f"SmolLM2-135M shape; every load reads the same PEFT folder (rank 8 on {', '.join(TARGETS)}, "
            f"{results['adapterkit']['adapter_tensor_bytes'] / 1e6:.2f} MB of tensors) under a new name; each "
            "library in its own process. RSS growth is measured after gc and malloc_trim; set_adapter "
            "alternates between the 1st and the latest adapter (with 1 resident it re-selects the same one). "
            f"PEFT's loop stops after {peft_budget_s:.0f} s.")
    return results, note


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--full", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads "
                             "spin against other processes and timings swing by 3x)")
    parser.add_argument("--skip", default="",
                        help="comma list of parts to skip: throughput,resident,serve; a skipped part keeps its "
                             "results from the previous run in --out, so one part can be re-measured alone")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full" if args.full else "default"
    plan = PROFILES[profile]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import peft
    import transformers

    from bench.report import write_all
    from bench.throughput import run_shape

    settings = {
        "command": "python -m bench.run" + {"quick": " --quick", "full": " --full", "default": ""}[profile],
        "profile": profile, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "target_shape": "smollm2-135m", "resident_counts": plan["resident_counts"],
        "parts": [],
    }
    results = {"settings": settings, "throughput": []}
    skip = set(filter(None, args.skip.split(",")))
    previous_file = args.out / "results.json"
    previous = json.loads(previous_file.read_text()) if skip and previous_file.exists() else {}
    if "throughput" in skip and previous.get("throughput"):
        results["throughput"] = previous["throughput"]
        settings["parts"] += [p for p in previous["settings"]["parts"] if not p.startswith("resident")]
    if "resident" in skip and previous.get("resident"):
        results["resident"] = previous["resident"]
        settings["resident_note"] = previous["settings"].get("resident_note", "")
        settings["parts"] += [p for p in previous["settings"]["parts"] if p.startswith("resident")]
    started = time.perf_counter()

    def save():
        results["wall_s"] = time.perf_counter() - started
        return write_all(results, args.out)

    if "throughput" not in skip:
        for shape, mode, batch, length, ranks, ks, repeats in plan["throughput"]:
            t0 = time.perf_counter()
            results["throughput"] += run_shape(shape, ranks, ks, mode, batch, length, repeats, log)
            settings["parts"].append(
                f"{shape} {mode}: batch {batch}, {'KV cache' if mode == 'decode' else 'prompt'} {length}, "
                f"LoRA r in {ranks} on all linear layers of every block, k in {ks}, 1 warm-up + {repeats} "
                f"interleaved repeats ({time.perf_counter() - t0:.0f} s)")
            save()
    if "resident" not in skip:
        t0 = time.perf_counter()
        results["resident"], settings["resident_note"] = _resident(plan["resident_counts"], plan["peft_budget_s"],
                                                                  args.threads)
        settings["parts"].append(f"resident adapters: counts {plan['resident_counts']} "
                                 f"({time.perf_counter() - t0:.0f} s)")
    if "serve" not in skip:
        # `adapterkit serve` under load: its own process tree and its own report (serve.json, SERVE.md).
        t0 = time.perf_counter()
        log("serve: the HTTP server under load (python -m bench.serve)")
        subprocess.run([sys.executable, "-m", "bench.serve", "--out", str(args.out), "--threads", str(args.threads),
                        *(["--quick"] if profile == "quick" else [])], check=True, cwd=Path(__file__).parent.parent)
        settings["parts"].append(f"serve: see SERVE.md ({time.perf_counter() - t0:.0f} s)")
    report = save()
    log(f"wrote {report} and its JSON and PNG beside it")
    print(report.read_text())


if __name__ == "__main__":
    main()
