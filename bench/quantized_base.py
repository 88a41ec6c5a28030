"""Base memory and LoRA training step time: SmolLM2-135M in float32 against nf4 (QLoRA).

    python -m bench.quantized_base            # ~1 min on one CPU thread; needs adapterkit[quant]

Memory: the bytes of the base's parameters and buffers, plus the 4-bit quantization
statistics (absmax, and for double quantization their own statistics), i.e. what the
base holds resident. Step time: median of a few AdamW steps (forward, backward, update)
of r=8 LoRA on q/k/v/o, batch 4 x 64 tokens, after one warm-up step. On CPU the nf4
layers dequantize per call, so a step is slower than float32 here; on a GPU the
kernels are fused. The figures are ratios for this machine, not pass/fail timings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _step_seconds(model, steps: int) -> float:
    from adapterkit import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    peft.train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        peft(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quantization", default="nf4")
    args = parser.parse_args()
    from adapterkit.hf import load_base
    from adapterkit.model.quantized import resident_bytes

    rows = []
    for quantization in (None, args.quantization):
        model, _ = load_base("smollm2", quantization=quantization)
        rows.append((quantization or "float32", resident_bytes(model), _step_seconds(model, args.steps)))
    base_bytes, base_step = rows[0][1], rows[0][2]
    print(f"{'base':10} {'resident MB':>12} {'ratio':>6} {'step s':>8} {'ratio':>6}")
    for name, size, step in rows:
        print(f"{name:10} {size / 2**20:12.1f} {size / base_bytes:6.2f} {step:8.2f} {step / base_step:6.2f}")


if __name__ == "__main__":
    main()
