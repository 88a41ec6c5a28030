"""The demo's story: one base, two task adapters, saved, reloaded, switched, mixed, merged.

Each step checks what it claims (identical outputs, exact-match figures) and
records it in a DemoResult, so the tests assert on the same run a user watches.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapterkit.demo.console import say, section, table
from adapterkit.files import format_bytes
from adapterkit.hf import load_base
from adapterkit.model.adapter_model import AdapterModel, get_peft_model
from adapterkit.model.mixed import BASE_ROW
from adapterkit.ops.merge import export_merged
from adapterkit.training.evaluate import exact_match, generate_responses
from adapterkit.training.tasks import TASK_NAMES, Task, make_task, recommended_lora_config
from adapterkit.training.trainer import train

# What each built-in task asks, in words for the demo's table.
TASK_DESCRIPTIONS = {
    "reverse": "say the three words in reverse order",
    "shout": "say the three words in capitals",
}


@dataclass
class TaskOutcome:
    name: str
    base_exact_match: float
    adapter_exact_match: float
    adapter_bytes: int = 0
    load_seconds: float = 0.0
    train_seconds: float = 0.0


@dataclass
class DemoResult:
    base_parameters: int = 0
    full_copy_bytes: int = 0
    outcomes: list[TaskOutcome] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)  # claim -> held
    seconds: float = 0.0


def _probe_logits(model, tokenizer, task: Task, count: int = 4) -> torch.Tensor:
    """Logits on a few eval prompts: a sensitive fingerprint of the model's behaviour."""
    from adapterkit.training.collate import collate_prompts
    from adapterkit.training.encoding import encode_prompt

    encoded = [encode_prompt(tokenizer, ex.prompt_messages) for ex in task.eval[:count]]
    with torch.no_grad():
        return model(**collate_prompts(encoded, tokenizer.pad_token_id)).logits


def run_demo(quick: bool = False, workdir: str | Path | None = None, base: str = "smollm2") -> DemoResult:
    started = time.perf_counter()
    result = DemoResult()
    # transformers' own per-file progress bars would drown the story's tables.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="adapterkit-demo-")
    workdir = Path(workdir)

    # 1 -------------------------------------------------------------------------------------
    section(1, "The base model")
    t0 = time.perf_counter()
    model, tokenizer = load_base(base)
    load_s = time.perf_counter() - t0
    result.base_parameters = sum(p.numel() for p in model.parameters())
    result.full_copy_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    table("base", ["model", "parameters", "a full copy (float32)", "loaded in"],
          [[base, f"{result.base_parameters:,d}", format_bytes(result.full_copy_bytes), f"{load_s:.1f} s"]])

    # 2 -------------------------------------------------------------------------------------
    section(2, "Two tasks the base model fails")
    tasks = [make_task(name, quick=quick) for name in TASK_NAMES]
    base_em = {}
    for task in tasks:
        base_em[task.name] = exact_match(model, tokenizer, task.eval, task.max_new_tokens).exact_match
    # What the base alone answers to the prompts shown in step 6, before any adapter exists.
    base_replies = generate_responses(model, tokenizer, [task.eval[1].prompt_messages for task in tasks])
    table("tasks (train and eval sets are disjoint)", ["task", "what it asks", "example", "train", "eval", "base exact-match"],
          [[t.name, TASK_DESCRIPTIONS.get(t.name, ""), f"{t.eval[0].prompt_messages[-1]['content']} -> {t.eval[0].response}",
            len(t.train), len(t.eval), f"{100 * base_em[t.name]:.0f}%"] for t in tasks])

    # 3 -------------------------------------------------------------------------------------
    section(3, "One adapter per task, on the same frozen base")
    wrapped: AdapterModel | None = None
    for task in tasks:
        if wrapped is None:
            wrapped = get_peft_model(model, recommended_lora_config(), adapter_name=task.name)
        else:
            wrapped.add_adapter(task.name, recommended_lora_config())
            wrapped.set_adapter(task.name)
        trainable, total = wrapped.get_nb_trainable_parameters()
        say(f"training [bold]{task.name}[/]: {trainable:,d} trainable parameters of {total:,d} "
            f"({100 * trainable / total:.2f}%), base frozen")
        trained = train(wrapped, tokenizer, task.train, task.train_config)
        scored = exact_match(wrapped, tokenizer, task.eval, task.max_new_tokens)
        result.outcomes.append(TaskOutcome(task.name, base_em[task.name], scored.exact_match,
                                           train_seconds=trained.seconds))
        say(f"  {task.name}: {trained.steps} steps in {trained.seconds:.0f} s, final loss {trained.losses[-1]:.3f}, "
            f"held-out exact-match {100 * scored.exact_match:.0f}%")
    assert wrapped is not None
    wrapped.eval()
    reference = {}
    for task in tasks:
        wrapped.set_adapter(task.name)
        reference[task.name] = _probe_logits(wrapped, tokenizer, task)

    # 4 -------------------------------------------------------------------------------------
    section(4, "Save only the adapters")
    saved = wrapped.save_pretrained(workdir / "adapters")
    rows: list[list[object]] = []
    for outcome in result.outcomes:
        folder = saved / outcome.name
        outcome.adapter_bytes = sum(f.stat().st_size for f in folder.iterdir())
        rows.append([outcome.name, ", ".join(sorted(f.name for f in folder.iterdir())), f"{outcome.adapter_bytes:,d}",
                     f"1/{result.full_copy_bytes / outcome.adapter_bytes:,.0f} of a full copy"])
    table(f"saved under {saved}", ["adapter", "files", "bytes", "size"], rows)

    # 5 -------------------------------------------------------------------------------------
    section(5, "Load both into a freshly loaded base")
    fresh_base, _ = load_base(base)
    fresh = AdapterModel(fresh_base)
    fresh.eval()
    rows = []
    identical = True
    for task, outcome in zip(tasks, result.outcomes):
        t0 = time.perf_counter()
        fresh.load_adapter(saved / task.name, adapter_name=task.name)
        outcome.load_seconds = time.perf_counter() - t0
        fresh.set_adapter(task.name)
        delta = (_probe_logits(fresh, tokenizer, task) - reference[task.name]).abs().max().item()
        identical &= delta == 0.0
        rows.append([task.name, f"{1000 * outcome.load_seconds:.0f} ms", f"{delta:.1e}"])
    table("reloaded", ["adapter", "load time", "max |Δ logits| vs before saving"], rows)
    result.checks["reloaded outputs identical"] = identical

    # 6 -------------------------------------------------------------------------------------
    section(6, "Switch between adapters, or turn them off")
    prompts = [task.eval[1] for task in tasks]
    columns = {}
    for task in tasks:
        fresh.set_adapter(task.name)
        columns[task.name] = generate_responses(fresh, tokenizer, [p.prompt_messages for p in prompts])
    with fresh.disable_adapter():
        columns[BASE_ROW] = generate_responses(fresh, tokenizer, [p.prompt_messages for p in prompts])
    table("greedy replies", ["prompt", "expected", *[f"adapter {t.name}" for t in tasks], "adapters disabled"],
          [[p.prompt_messages[-1]["content"], p.response, *[columns[t.name][i] for t in tasks], columns[BASE_ROW][i]]
           for i, p in enumerate(prompts)])
    result.checks["disable_adapter gives base behaviour"] = columns[BASE_ROW] == base_replies

    # 7 -------------------------------------------------------------------------------------
    section(7, "One generate call, a different adapter per row")
    row_prompts = [tasks[0].eval[2], tasks[1].eval[2], tasks[0].eval[2]]
    row_names = [tasks[0].name, tasks[1].name, BASE_ROW]
    mixed = generate_responses(fresh, tokenizer, [p.prompt_messages for p in row_prompts],
                               adapter_names=row_names)
    alone = []
    for prompt, name in zip(row_prompts, row_names):
        if name == BASE_ROW:
            with fresh.disable_adapter():
                alone += generate_responses(fresh, tokenizer, [prompt.prompt_messages])
        else:
            fresh.set_adapter(name)
            alone += generate_responses(fresh, tokenizer, [prompt.prompt_messages])
    table("mixed batch", ["row", "adapter", "prompt", "reply in the mixed batch", "reply alone", "same"],
          [[i, n, p.prompt_messages[-1]["content"], m, a, "yes" if m == a else "NO"]
           for i, (n, p, m, a) in enumerate(zip(row_names, row_prompts, mixed, alone))])
    result.checks["mixed batch rows equal each row alone"] = mixed == alone

    # 8 -------------------------------------------------------------------------------------
    section(8, f"Merge adapter {tasks[0].name} and export a plain transformers model")
    from transformers import AutoModelForCausalLM

    fresh.set_adapter(tasks[0].name)
    merged_dir = export_merged(fresh, workdir / f"merged-{tasks[0].name}", tokenizer=tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    plain.eval()
    delta = (_probe_logits(plain, tokenizer, tasks[0]) - reference[tasks[0].name]).abs().max().item()
    merged_em = exact_match(plain, tokenizer, tasks[0].eval, tasks[0].max_new_tokens).exact_match
    # The adapter file is still an adapter: it loads on its own again.
    fresh.load_adapter(saved / tasks[0].name, adapter_name="reloaded")
    fresh.set_adapter("reloaded")
    again = (_probe_logits(fresh, tokenizer, tasks[0]) - reference[tasks[0].name]).abs().max().item()
    table("merged export", ["folder", "loaded with", "max |Δ logits| vs adapter", "exact-match", "adapter file reloads (Δ)"],
          [[merged_dir.name, "transformers alone", f"{delta:.1e}", f"{100 * merged_em:.0f}%", f"{again:.1e}"]])
    result.checks["merged model matches the adapter"] = delta < 1e-3
    result.checks["adapter file still loads on its own"] = again == 0.0

    # 9 -------------------------------------------------------------------------------------
    section(9, "Serve both adapters over HTTP, the OpenAI API")
    from adapterkit.demo.serve_step import serve_and_ask

    served = serve_and_ask(base, {t.name: saved / t.name for t in tasks},
                           [(tasks[0].name, prompts[0].prompt_messages, columns[tasks[0].name][0]),
                            (tasks[1].name, prompts[1].prompt_messages, columns[tasks[1].name][1]),
                            (base, prompts[0].prompt_messages, columns[BASE_ROW][0])])
    if served is not None:
        result.checks["served replies equal in-process replies"] = served

    # 10 ------------------------------------------------------------------------------------
    section(10, "Summary")
    table("per task", ["task", "base exact-match", "adapter exact-match", "adapter bytes", "load time", "train time"],
          [[o.name, f"{100 * o.base_exact_match:.0f}%", f"{100 * o.adapter_exact_match:.0f}%", f"{o.adapter_bytes:,d}",
            f"{1000 * o.load_seconds:.0f} ms", f"{o.train_seconds:.0f} s"] for o in result.outcomes])
    result.seconds = time.perf_counter() - started
    table("checks", ["claim", "held"], [[k, "yes" if v else "NO"] for k, v in result.checks.items()])
    say(f"demo finished in {result.seconds:.0f} s; files under {workdir}")
    return result
