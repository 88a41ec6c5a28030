"""The slowest load while adapters accumulate: pack growth against room reserved up front.

    python -m bench.load_stall --count 800           # ~2 min, ~1.5 GB
    python -m bench.load_stall --count 800 --reserve 800

SmolLM2-135M shape, the resident benchmark's adapter (rank 8 on q_proj and v_proj) loaded
`--count` times under new names. Without room reserved, a pack that fills reallocates
and copies every resident adapter of its rank, so a few loads stall for far longer
than the rest; with `reserve_adapter_slots(count)` no load reallocates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--reserve", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from adapterkit import AdapterModel
    from bench.common import build_base
    from bench.resident import make_adapter_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_adapter_folder("smollm2-135m", 8, Path(tmp) / "adapter")
        model = AdapterModel(build_base("smollm2-135m"))
        if args.reserve:
            start = time.perf_counter()
            model.reserve_adapter_slots(args.reserve)
            print(f"reserve_adapter_slots({args.reserve}): {(time.perf_counter() - start) * 1e3:.1f} ms")
        times = []
        for i in range(args.count):
            start = time.perf_counter()
            model.load_adapter(folder, adapter_name=f"a{i}")
            times.append(time.perf_counter() - start)
    worst = sorted(range(len(times)), key=times.__getitem__)[-3:]
    print(f"{args.count} loads, reserve {args.reserve}: median {statistics.median(times) * 1e3:.1f} ms, "
          f"slowest {', '.join(f'#{i + 1} {times[i] * 1e3:.0f} ms' for i in reversed(worst))}")


if __name__ == "__main__":
    main()
