"""Many resident adapters: load time of the 1st / 100th / 1000th, set_adapter, memory.

Each library runs in its own process (`python -m bench.resident --lib ours`), so
resident memory (RSS) counts that library's adapters and nothing else. Every load
reads the same PEFT folder under a new name; the floor is a bare safetensors
`load_file` of the same file, timed at the same moments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from bench.common import build_base, free_memory

TARGETS = ["q_proj", "v_proj"]  # rank 8 on q and v: 1.8 MB per adapter, so 1000 fit twice in RAM


def make_adapter_folder(shape: str, rank: int, folder: Path) -> Path:
    import peft

    base = build_base(shape)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(folder)
    return folder


def _rss() -> int:
    free_memory()
    return psutil.Process().memory_info().rss


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(lib: str, shape: str, folder: Path, counts: list[int], budget_s: float) -> dict:
    weights = folder / "adapter_model.safetensors"
    tensor_bytes = sum(t.numel() * t.element_size() for t in load_file(weights).values())
    base = build_base(shape)
    model = None
    if lib == "peft":
        import peft

        def load(i):
            nonlocal model
            if model is None:
                model = peft.PeftModel.from_pretrained(base, folder, adapter_name=f"a{i}")
            else:
                model.load_adapter(folder, adapter_name=f"a{i}")
    else:
        from adapterkit import AdapterModel

        model = AdapterModel(base)

        def load(i):
            model.load_adapter(folder, adapter_name=f"a{i}")

    rss_before = _rss()
    load_s: list[float] = []
    checkpoints = {}
    started = time.perf_counter()
    for i in range(1, max(counts) + 1):
        start = time.perf_counter()
        load(i)
        load_s.append(time.perf_counter() - start)
        if i in counts:
            rss = _rss()
            floor = _median_time(lambda: load_file(weights), 5)
            names = [f"a{1}", f"a{i}"]
            flip = iter(range(10**9))
            set_s = _median_time(lambda: model.set_adapter(names[next(flip) % 2]), 21)
            window = load_s[max(0, i - 10): i]
            checkpoints[i] = {
                "load_s": load_s[-1], "load_window_median_s": statistics.median(window),
                "bare_load_file_s": floor, "set_adapter_s": set_s,
                "rss_delta_bytes": rss - rss_before, "tensor_bytes": i * tensor_bytes,
            }
            print(f"[{lib}] {i} adapters: load {load_s[-1] * 1e3:.1f} ms (window median "
                  f"{statistics.median(window) * 1e3:.1f}), floor {floor * 1e3:.2f} ms, set_adapter "
                  f"{set_s * 1e6:.1f} us, RSS/tensor bytes {(rss - rss_before) / (i * tensor_bytes):.3f}",
                  file=sys.stderr, flush=True)
        if time.perf_counter() - started > budget_s:
            print(f"[{lib}] stopped after {i} adapters: over the {budget_s:.0f} s budget", file=sys.stderr)
            break
    return {"lib": lib, "shape": shape, "adapter_tensor_bytes": tensor_bytes, "loaded": len(load_s),
            "load_s_all": load_s, "checkpoints": checkpoints}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["ours", "peft"], required=True)
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--counts", default="1,100,1000")
    parser.add_argument("--budget-s", type=float, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.counts.split(",")]
    result = run(args.lib, args.shape, args.folder, counts, args.budget_s)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
