"""A quick check of the mixed-adapter decode step: its cost against the base, one dtype at a time.

    python -m bench.mixed_decode                      # float32, ~1-2 min on one thread
    python -m bench.mixed_decode --dtype bfloat16 --src OTHER/src   # another checkout, same numbers

SmolLM2-135M shape (random weights), rank-16 LoRA on every linear layer, one
decode step of `--batch` rows over a `--kv`-token cache. Methods are timed
interleaved on the same inputs; the report is each method's median over the
base's median (ratios travel between machines, milliseconds do not). `--src`
runs the same measurement against another source tree, for before/after checks
of a change to the core paths.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch


def measure(dtype: torch.dtype, batch: int, kv: int, rank: int, ks: list[int], repeats: int) -> dict[str, float]:
    import adapterkit
    from adapterkit import AdapterModel
    from bench.common import ALL_LINEAR, build_base, clone, interleaved
    from bench.throughput import _decode_inputs, _row_names

    base = build_base("smollm2-135m").to(dtype)
    input_ids, mask, cache = _decode_inputs(base, batch, kv)
    for layer in cache.layers:  # the random cache is float32; the model's dtype it must be
        layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)
    ours = AdapterModel(clone(base))
    config = adapterkit.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_LINEAR, init_lora_weights=False)
    for i in range(max(ks)):
        ours.add_adapter(f"a{i}", config)
    ours.set_adapter("a0")
    ours.to(dtype).eval()

    def call(model, **kwargs):
        def step():
            with torch.inference_mode():
                model(input_ids=input_ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                      logits_to_keep=1, **kwargs)
            cache.crop(-(cache.get_seq_length() - kv))  # back to the same cache length
        return step

    methods = {"base": call(base), "one adapter": call(ours)}
    methods.update({f"mixed k={k}": call(ours, adapter_names=_row_names(k, batch)) for k in ks})
    result = interleaved(methods, repeats)
    floor = result["base"]["median_s"]
    return {name: stats["median_s"] / floor for name, stats in result.items()} | {"base_ms": floor * 1e3}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--kv", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--ks", default="1,4,32", help="distinct adapters over the rows")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--src", default=None, help="run against this source tree instead (a subprocess)")
    args = parser.parse_args(argv)
    if args.src:
        argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        at = argv.index("--src")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.src))
        subprocess.run([sys.executable, "-m", "bench.mixed_decode", *argv[:at], *argv[at + 2:]], check=True,
                       env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return
    torch.set_num_threads(args.threads)
    ratios = measure(getattr(torch, args.dtype), args.batch, args.kv, args.rank,
                     [int(k) for k in args.ks.split(",")], args.repeats)
    print(f"{args.dtype} decode, batch {args.batch}, cache {args.kv}, r={args.rank}, {args.threads} thread(s); "
          f"base {ratios.pop('base_ms'):.1f} ms; time / base:")
    for name, ratio in ratios.items():
        print(f"  {name:14s} {ratio:.3f}")


if __name__ == "__main__":
    main()
