"""Which modules of a model a LoraConfig targets.

Rules (PEFT's, without its substring surprises):
- a list matches a module whose dotted name equals an entry or ends in "." + entry;
- a string is a regular expression that must match the whole dotted name;
- "all-linear" means every Linear / Conv1D except the output head;
- `exclude_modules` follows the same two rules and wins over targets;
- `layers_to_transform` keeps only modules under the given layer indices (list targets only,
  as in PEFT: LoraConfig refuses it with a string).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

from adapterkit.core.config import LoraConfig
from adapterkit.core.config_checks import LAYERS_PATTERN_REGEX
from adapterkit.core.injection import ModulesToSave, walk
from adapterkit.core.kinds import EMBEDDING, ModuleKind, kind_of
from adapterkit.errors import TargetModulesError

ALL_LINEAR = "all-linear"


def module_kind(module: nn.Module) -> ModuleKind | None:
    """The kind of a module LoRA can adapt (core.kinds), else None."""
    return kind_of(module)


def _matches_name(pattern: list[str] | str, name: str) -> str | None:
    """The entry of `pattern` that matches `name`, or None."""
    if isinstance(pattern, str):
        return pattern if re.fullmatch(pattern, name) else None
    for entry in pattern:
        if name == entry or name.endswith("." + entry):
            return entry
    return None


def _layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(LAYERS_PATTERN_REGEX.format(pattern=pattern), name)
            if match:
                break
    return int(match.group("idx")) if match else None


def _output_head_names(model: nn.Module, modules) -> set[str]:
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return {name for name, _ in walk(model, modules) if name.split(".")[-1] in ("lm_head", "score")}
    return {name for name, module in walk(model, modules) if module is head}


@dataclass(frozen=True)
class TargetedModule:
    name: str
    module: nn.Module
    kind: ModuleKind


def find_targets(model: nn.Module, config: LoraConfig,
                 modules: list[tuple[str, nn.Module]] | None = None) -> list[TargetedModule]:
    """Every module the config adapts, in model order. Raises TargetModulesError
    when nothing matches, or when some list entries match nothing. `modules` is an
    optional snapshot of `model.named_modules()`."""
    target = config.target_modules
    if target is None:
        raise TargetModulesError(
            "LoraConfig.target_modules is not set. Name the modules to adapt, for example "
            "target_modules=['q_proj', 'v_proj'], or use 'all-linear'."
        )
    modules = list(walk(model, modules))
    head_names = _output_head_names(model, modules) if target == ALL_LINEAR else set()
    saved = config.head_modules_to_save()
    found: list[TargetedModule] = []
    used_entries: set[str] = set()
    # Modules target_modules matched but another field then dropped, by that field: when
    # nothing is left, the error must blame the field that removed them.
    dropped: dict[str, list[str]] = {}
    inside_saved = _names_inside_saved_wrappers(modules)
    for name, module in modules:
        kind = module_kind(module)
        if not name or kind is None or name in inside_saved:
            continue
        entry: str | None
        if target == ALL_LINEAR:
            if kind is EMBEDDING or name in head_names:
                continue
            entry = ALL_LINEAR
        else:
            entry = _matches_name(target, name)
            if entry is None:
                continue
        # The entry names a real module even if exclusion drops it: PEFT expands
        # "all-linear" to every linear name and then applies exclude_modules.
        used_entries.add(entry)
        remover = _remover(config, name, saved)
        if remover is not None:
            dropped.setdefault(remover, []).append(name)
            continue
        found.append(TargetedModule(name, module, kind))
    _check_coverage(model, config, found, used_entries, dropped)
    return found


def _remover(config: LoraConfig, name: str, saved: list[str]) -> str | None:
    """The config field that keeps a module target_modules matched from being adapted, if any."""
    if config.exclude_modules and _matches_name(config.exclude_modules, name):
        return "exclude_modules"
    if saved and any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in saved):
        return "modules_to_save"
    layers = config.layers_to_transform
    if layers is not None and not isinstance(config.target_modules, str):
        if _layer_index(name, config.layers_pattern) not in ([layers] if isinstance(layers, int) else layers):
            return "layers_to_transform"
    return None


def _names_inside_saved_wrappers(modules) -> set[str]:
    """Modules held by a ModulesToSave (trained in full): never LoRA targets."""
    inside: set[str] = set()
    for name, module in modules:
        if isinstance(module, ModulesToSave):
            inside.update(f"{name}.{sub}" for sub, _ in module.named_modules() if sub)
    return inside


def _check_coverage(model, config, found, used_entries, dropped: dict[str, list[str]]) -> None:
    target = config.target_modules
    if not found and dropped:
        raise TargetModulesError(_all_removed_message(config, dropped))
    if not found:
        raise TargetModulesError(
            f"target_modules={target!r} matched no adaptable module (Linear, Conv1D, Embedding) "
            f"in {type(model).__name__}. Closest module names: {_closest(model, target)}."
        )
    if isinstance(target, list):
        unused = [entry for entry in target if entry not in used_entries]
        if unused:
            raise TargetModulesError(
                f"target_modules entries {unused} matched no adaptable module, while "
                f"{sorted(used_entries)} did. Fix or drop them. Closest module names: {_closest(model, unused)}."
            )


def _all_removed_message(config: LoraConfig, dropped: dict[str, list[str]]) -> str:
    """Name the field(s) that removed every module target_modules matched, and how many each."""
    fields = sorted(dropped, key=lambda f: -len(dropped[f]))
    parts = []
    for field in fields:
        value = getattr(config, field)
        if field == "layers_to_transform":
            indices = sorted({i for i in (_layer_index(n, config.layers_pattern) for n in dropped[field])
                              if i is not None})
            detail = (f"layers_to_transform={value!r} (layers_pattern={config.layers_pattern!r}) removed "
                      f"{len(dropped[field])}: their layer indices are {indices or 'not found by that pattern'}")
        else:
            detail = f"{field}={value!r} removed {len(dropped[field])}, e.g. {dropped[field][:2]}"
        parts.append(detail)
    total = sum(len(v) for v in dropped.values())
    return (f"{' and '.join(fields)} removed every module target_modules matched ({total} in all): "
            f"{'; '.join(parts)}. Fix {' or '.join(fields)} so that some of them remain.")


def _closest(model: nn.Module, target) -> str:
    wanted = [target] if isinstance(target, str) else list(target)
    # Only modules LoRA can adapt: suggesting a block or an activation would not help.
    candidates: dict[str, str] = {}
    for name, module in model.named_modules():
        if name and module_kind(module):
            candidates.setdefault(name.split(".")[-1], type(module).__name__)
            candidates.setdefault(name, type(module).__name__)
    picks: list[str] = []
    for entry in wanted:
        for match in difflib.get_close_matches(entry, list(candidates), n=3, cutoff=0.4):
            if match not in picks:
                picks.append(match)
    if not picks:
        picks = [n for n, m in model.named_modules() if module_kind(m)][:5]
        return ", ".join(f"{n} ({type(dict(model.named_modules())[n]).__name__})" for n in picks) or "none"
    return ", ".join(f"{p} ({candidates[p]})" for p in picks[:6])
