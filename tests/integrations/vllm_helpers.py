"""Real PEFT folders (saved by adapterkit from a tiny Llama), edited into the shapes vLLM refuses,
and vLLM's own code where this machine can import it."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapterkit import LoraConfig, get_peft_model
from helpers import randomize_adapter, tiny_llama


def saved_adapter(folder: Path, r: int = 4, targets=("q_proj", "v_proj"), seed: int = 3) -> Path:
    model = get_peft_model(tiny_llama(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    randomize_adapter(model, seed=seed)
    model.save_pretrained(folder)
    return folder


def edit(folder: Path, config: dict | None = None, add: dict[str, torch.Tensor] | None = None,
         drop: tuple[str, ...] = ()) -> Path:
    """Change a saved folder in place: config fields (None deletes), tensors added or dropped."""
    path = folder / "adapter_config.json"
    current = json.loads(path.read_text())
    for key, value in (config or {}).items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    path.write_text(json.dumps(current))
    if add or drop:
        weights = folder / "adapter_model.safetensors"
        tensors = {k: v for k, v in load_file(weights).items() if k not in drop}
        tensors.update(add or {})
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def vllm_source(relative: str) -> Path | None:
    """A file of the installed vLLM package, found without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def vllm_functions(relative: str, names: tuple[str, ...]) -> dict:
    """Functions compiled from the installed vLLM's own source file (`vllm/lora/utils.py` imports the
    whole model executor, which needs CUDA-era dependencies; these functions need none of it)."""
    path = vllm_source(relative)
    assert path is not None
    tree = ast.parse(path.read_text())
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {node.name for node in wanted} == set(names), f"{relative} no longer defines {names}"
    for node in wanted:
        node.returns = None  # annotations name types this namespace does not import
        for arg in node.args.args:
            arg.annotation = None
    namespace: dict = {}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}
