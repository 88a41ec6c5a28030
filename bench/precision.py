"""Half-precision accuracy of mixed rows and of one adapter, adapterkit and PEFT, against float32.

    python -m bench.precision            # ~1 min on one thread

A tiny Llama (hidden 32, 2 layers) with three adapters on every linear layer
(r=4 alpha=8; r=8 alpha=4 rsLoRA; r=12 alpha=10), saved by PEFT and loaded into
both libraries from the same folders. For each seed: 12 rows (a, b, c, ...),
the logits of a 11-token prompt and of one decode step after it, in bfloat16 and
float16, against the same model in float32. "mixed" runs all rows in one call
with adapter_names; "single" runs each row alone with its adapter set.
Reported: max and mean |dlogit| over all seeds. The max is one element and swings
by ±30% between seeds for either path; the mean is the stable figure.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

T_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {"a": (4, 8, False), "b": (8, 4, True), "c": (12, 10, False)}
ROWS = ["a", "b", "c"] * 4


def _folders(seed: int, root: Path):
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    base = LlamaForCausalLM(config).eval()
    for name, (rank, alpha, rslora) in ADAPTERS.items():
        made = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=T_ALL, init_lora_weights=False))
        with torch.no_grad():  # PEFT's init_lora_weights=False B is large; a trained adapter's is not
            for param_name, param in made.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed * 100 + len(param_name)))
        made.save_pretrained(str(root / name))
    return base


def _load(lib: str, base, root: Path):
    if lib == "adapterkit":
        from adapterkit import AdapterModel
        model = AdapterModel(copy.deepcopy(base))
        for name in ADAPTERS:
            model.load_adapter(root / name, adapter_name=name)
        return model.eval()
    import peft
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), root / "a", adapter_name="a")
    for name in list(ADAPTERS)[1:]:
        model.load_adapter(root / name, adapter_name=name)
    return model.eval()


@torch.no_grad()
def _logits(model, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    prompt = model(input_ids=ids[:, :-1], adapter_names=names, use_cache=True)
    step = model(input_ids=ids[:, -1:], past_key_values=prompt.past_key_values, adapter_names=names)
    return torch.cat([prompt.logits, step.logits], dim=1).float()


@torch.no_grad()
def _single(model, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    rows = []
    for row, name in enumerate(names):
        model.set_adapter(name)
        one = ids[row: row + 1]
        prompt = model(input_ids=one[:, :-1], use_cache=True)
        step = model(input_ids=one[:, -1:], past_key_values=prompt.past_key_values)
        rows.append(torch.cat([prompt.logits, step.logits], dim=1).float())
    return torch.cat(rows)


def measure(seeds: int) -> dict[tuple[str, str, str], tuple[float, float]]:
    errors: dict[tuple[str, str, str], list[torch.Tensor]] = {}
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            base = _folders(seed, Path(tmp))
            ids = torch.randint(3, 64, (len(ROWS), 12), generator=torch.Generator().manual_seed(seed))
            reference = _logits(_load("adapterkit", base, Path(tmp)), ids, ROWS)
            for lib in ("adapterkit", "peft"):
                for dtype in ("bfloat16", "float16"):
                    model = _load(lib, base, Path(tmp)).to(getattr(torch, dtype))
                    errors.setdefault((lib, dtype, "mixed"), []).append((_logits(model, ids, ROWS) - reference).abs())
                    errors.setdefault((lib, dtype, "single"), []).append((_single(model, ids, ROWS) - reference).abs())
    return {key: (max(e.max().item() for e in errs), torch.cat([e.flatten() for e in errs]).mean().item())
            for key, errs in errors.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stats = measure(args.seeds)
    print(f"|dlogit| against float32, {args.seeds} seeds x {len(ROWS)} rows (max / mean)")
    print("| dtype | path | adapterkit | PEFT |\n|---|---|---|---|")
    for dtype in ("bfloat16", "float16"):
        for path in ("mixed", "single"):
            ours, theirs = stats[("adapterkit", dtype, path)], stats[("peft", dtype, path)]
            print(f"| {dtype} | {path} | {ours[0]:.3g} / {ours[1]:.3g} | {theirs[0]:.3g} / {theirs[1]:.3g} |")


if __name__ == "__main__":
    main()
