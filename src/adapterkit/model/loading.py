"""Validate an adapter's tensors against a model before anything is changed.

`plan_load` reads nothing from the model but names and shapes; it raises on the
first problem it can describe fully (all unexpected keys, all missing keys, all
shape mismatches at once), so a failed load leaves the model exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adapterkit.core.config import TASK_HEADS, LoraConfig
from adapterkit.core.injection import ModulesToSave, lora_modules, walk
from adapterkit.core.layer import adapter_tensor_shapes
from adapterkit.core.targeting import TargetedModule, find_targets
from adapterkit.errors import (
    AdapterKeyMismatchError,
    AdapterShapeMismatchError,
    TargetModulesError,
    UnsupportedAdapterError,
)
from adapterkit.io import keys
from adapterkit.io.fingerprint import BaseFingerprint


@dataclass
class LoadPlan:
    targets: list[TargetedModule]
    saved_modules: list[str]
    # on-disk key -> (slot, tensor), every one checked
    factors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {"A","B"(,"M")}
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {param: t}
    biases: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> bias
    base_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> full weight


def resolve_saved_modules(model: nn.Module, config: LoraConfig, modules=None) -> list[str]:
    """Paths of the modules trained in full for this config (modules_to_save)."""
    wanted = config.modules_to_save or []
    auto_heads = [h for h in config.head_modules_to_save() if h not in wanted]
    # PEFT writes its task-type heads ("classifier", "score") into modules_to_save whether or
    # not the model has them; only entries the user chose must match something.
    optional = set(TASK_HEADS.get(str(config.task_type), ()))
    found: list[str] = []
    unmatched: list[str] = []
    for entry in list(wanted) + auto_heads:
        hits = [
            name for name, module in walk(model, modules)
            if name and (name == entry or name.endswith("." + entry))
            and ".modules_to_save." not in name and not name.endswith(".original_module")
            and ".original_module." not in name
        ]
        found.extend(h for h in hits if h not in found)
        if not hits and entry in wanted and entry not in optional:
            unmatched.append(entry)
    if unmatched:
        raise TargetModulesError(
            f"modules_to_save entries {unmatched} match no module of {type(model).__name__}; fix or drop them."
        )
    return found


def _original(model: nn.Module, path: str) -> nn.Module:
    module = model.get_submodule(path)
    return module.original_module if isinstance(module, ModulesToSave) else module


def expected_tensors(model: nn.Module, config: LoraConfig, targets: list[TargetedModule],
                     saved_modules: list[str], modules=None) -> dict[str, tuple[keys.Slot, tuple[int, ...]]]:
    expected: dict[str, tuple[keys.Slot, tuple[int, ...]]] = {}
    modules = list(walk(model, modules))
    existing_loras = lora_modules(model, modules)
    for target in targets:
        rank = config.rank_for(target.name)
        for role, shape in adapter_tensor_shapes(target.kind, target.module, rank, config.use_dora).items():
            expected[keys.factor_key(target.name, target.kind.name, role)] = (keys.Slot(role, target.name), shape)
    for path in saved_modules:
        for param, tensor in _original(model, path).state_dict().items():
            expected[keys.saved_key(path, param)] = (keys.Slot("saved", path, param), tuple(tensor.shape))
    if config.bias != "none":
        target_names = {t.name for t in targets}
        if config.bias == "lora_only":
            candidates = {t.name: t.module for t in targets}
        else:
            inside = {n for n, m in modules if ".modules_to_save." in n or ".original_module" in n}
            candidates = {n: m for n, m in modules
                          if n not in inside and n not in saved_modules and not isinstance(m, ModulesToSave)}
        for path, module in candidates.items():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                wrapped = path in target_names or path in existing_loras
                expected[keys.bias_key(path, wrapped)] = (keys.Slot("bias", path), tuple(bias.shape))
    return expected


@dataclass
class TensorCheck:
    """How an adapter's tensors compare with what a model expects for its config."""

    expected: dict[str, tuple[keys.Slot, tuple[int, ...]]]
    unexpected: list[str]
    missing: list[str]
    mismatched: list[tuple[str, keys.Slot, tuple[int, ...]]]  # key, slot, expected shape


def check_tensors(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor],
                  targets: list[TargetedModule], saved_modules: list[str], modules=None) -> TensorCheck:
    """Compare file tensors with the model, without changing anything. Both load_adapter
    (which raises on the result) and `adapterkit verify` (which lists it) use this."""
    expected = expected_tensors(model, config, targets, saved_modules, modules)

    # Optional: full base weights of LoRA'd modules, as PEFT writes for embeddings.
    optional = {}
    for target in targets:
        key = f"{keys.PREFIX}{target.name}.{keys.WRAPPED_WEIGHT}"
        if key in tensors:
            optional[key] = (keys.Slot("base_weight", target.name), tuple(target.module.weight.shape))
    # PEFT with bias="all" also writes the biases inside a modules_to_save wrapper, as
    # "<m>.modules_to_save.bias" (a copy of "<m>.bias") and "<m>.original_module.bias"
    # (the head the adapter replaces): accepted, and not used.
    if config.bias == "all":
        for path in saved_modules:
            for param, tensor in _original(model, path).state_dict().items():
                for inner in ("modules_to_save", "original_module"):
                    key = f"{keys.PREFIX}{path}.{inner}.{param}"
                    if param.endswith("bias") and key in tensors:
                        optional[key] = (keys.Slot("ignored", path, param), tuple(tensor.shape))
    expected.update(optional)
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    mismatched = [(key, slot, shape) for key, (slot, shape) in expected.items()
                  if key in tensors and tuple(tensors[key].shape) != shape]
    return TensorCheck(expected, unexpected, missing, mismatched)


def plan_load(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor], source: str,
              recorded_base: BaseFingerprint | None = None, modules=None, targets_and_saved=None) -> LoadPlan:
    """`modules` (a snapshot of named_modules) and `targets_and_saved` (what find_targets and
    resolve_saved_modules return for this config) may be passed in when the caller caches them."""
    modules = list(walk(model, modules))
    if targets_and_saved is None:
        targets_and_saved = (find_targets(model, config, modules), resolve_saved_modules(model, config, modules))
    targets, saved_modules = targets_and_saved
    check = check_tensors(model, config, tensors, targets, saved_modules, modules)
    expected, unexpected, missing = check.expected, check.unexpected, check.missing
    base_note = _base_note(config, recorded_base)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        raise AdapterKeyMismatchError(
            f"{source} does not fit {type(model).__name__} with its own config: {'; '.join(parts)}. "
            f"The adapter was probably trained on another architecture{base_note}; load it onto that base, "
            "or check target_modules in adapter_config.json."
        )
    mismatched = [
        f"{slot.module} ({slot.role}{'.' + slot.param if slot.param else ''}): expected {list(shape)}, "
        f"found {list(tensors[key].shape)}"
        for key, slot, shape in check.mismatched
    ]
    if mismatched:
        more = f" (and {len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise AdapterShapeMismatchError(
            f"{source} has tensors that do not fit this model: {'; '.join(mismatched[:5])}{more}. "
            f"The adapter was trained for another base or rank{base_note}. Load it onto the base it "
            "was trained on, or fix r / rank_pattern in adapter_config.json."
        )
    plan = LoadPlan(targets, saved_modules)
    for key, (slot, _) in expected.items():
        tensor = tensors[key]
        if slot.role in ("A", "B", "M"):
            plan.factors.setdefault(slot.module, {})[slot.role] = tensor
        elif slot.role == "saved":
            plan.saved.setdefault(slot.module, {})[slot.param] = tensor
        elif slot.role == "base_weight":
            plan.base_weights[slot.module] = tensor
        elif slot.role == "bias":
            plan.biases[slot.module] = tensor
    return plan


def check_dora_targets(config: LoraConfig, targets: list[TargetedModule]) -> None:
    """use_dora=True on modules DoRA is implemented for (Linear, Conv1D, quantized Linear)."""
    if not config.use_dora:
        return
    unsupported = [t.name for t in targets if t.kind.indexed]
    if unsupported:
        raise UnsupportedAdapterError(
            f"use_dora=True targets embedding layer(s) {unsupported[:3]}, where adapterkit does not implement "
            "DoRA yet. Exclude them (exclude_modules) or set use_dora=False.")


def _base_note(config: LoraConfig, recorded: BaseFingerprint | None) -> str:
    notes = []
    if config.base_model_name_or_path:
        notes.append(f"its config names base {config.base_model_name_or_path!r}")
    if recorded is not None:
        notes.append(f"its file records base {recorded.describe()}")
    return f" ({'; '.join(notes)})" if notes else ""
