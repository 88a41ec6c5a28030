"""Every check a load makes, before anything changes: adapterkit's one validation path.

`check_load` reads from the model only names, shapes and its fingerprint. It checks the config
first, raising, since nothing else can be checked without a valid config and its targets. It
then compares every tensor with what the model expects (keys, shapes, floating dtypes, finite
values, finite scales) and the recorded base, collecting every problem. `load_adapter` raises
the first problem, `adapterkit verify` lists them all: the two agree on every input because
they run this same function. A failed load therefore leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from adapterkit.core.config import CONFIG_NAME, TASK_HEADS, LoraConfig
from adapterkit.core.injection import walk
from adapterkit.core.targeting import TargetedModule, find_targets
from adapterkit.core.variants import variant_of
from adapterkit.errors import (
    AdapterError,
    AdapterKeyMismatchError,
    AdapterShapeMismatchError,
    BaseModelMismatchError,
    TargetModulesError,
    UnsupportedAdapterError,
)
from adapterkit.io import keys
from adapterkit.io.fingerprint import BaseFingerprint
from adapterkit.io.folder import AdapterFiles
from adapterkit.model.base_init import check_base_init
from adapterkit.model.offload import check_offloaded_targets
from adapterkit.model.state import Layout, accepted_extras, adapter_layout, base_module_at, bias_aliases
from adapterkit.model.values import ValueCheck, check_values


@dataclass
class LoadPlan:
    targets: list[TargetedModule]
    saved_modules: list[str]
    factors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {"A", "B", variant's}
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


@dataclass
class TensorCheck:
    """How an adapter's tensors compare with what a model expects for its config."""

    expected: Layout
    unexpected: list[str]
    missing: list[str]
    mismatched: list[tuple[str, keys.TensorDestination, tuple[int, ...]]]  # key, destination, expected shape
    values: ValueCheck


def check_tensors(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor],
                  targets: list[TargetedModule], saved_modules: list[str], modules=None,
                  allow_nonfinite: bool = False) -> TensorCheck:
    """Compare file tensors with the model, without changing anything. `tensors` may be re-keyed
    in place: a bias under PEFT's other spelling takes the key the layout gives it."""
    expected = adapter_layout(model, config, targets, saved_modules, modules)  # model/state.py: the one owner
    for alias, key in bias_aliases(expected).items():
        if alias in tensors and key not in tensors:
            tensors[key] = tensors.pop(alias)

    expected.update(accepted_extras(model, config, targets, saved_modules, tensors.keys()))
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    mismatched = [(key, dest, shape) for key, (dest, shape) in expected.items()
                  if key in tensors and tuple(tensors[key].shape) != shape]
    values = check_values(config, tensors, allow_nonfinite)
    if not allow_nonfinite:
        values.overflows = _overflows(model, expected, tensors, {t.name: t for t in targets}, set(values.nonfinite))
    return TensorCheck(expected, unexpected, missing, mismatched, values)


def _overflows(model, expected, tensors, targets_by_name, skip: set[str]) -> list[tuple[str, torch.dtype]]:
    """Tensors finite in the file whose values exceed the range of the dtype they are copied into."""
    out = []
    for key, (dest, _) in expected.items():
        tensor = tensors.get(key)
        if tensor is None or key in skip or not tensor.is_floating_point():
            continue
        if dest.role in keys.LORA_ROLES or dest.role == "base_weight":
            into = targets_by_name[dest.module].module.weight.dtype
        elif dest.role == "saved":
            into = base_module_at(model, dest.module).state_dict()[dest.param].dtype
        elif dest.role == "bias":
            into = base_module_at(model, dest.module).bias.dtype
        else:
            continue
        if not into.is_floating_point:  # a quantized base: the adapter runs in its compute dtype
            continue
        limit = torch.finfo(into).max
        if torch.finfo(tensor.dtype).max > limit and tensor.numel() and tensor.abs().max().item() > limit:
            out.append((key, into))
    return out


@dataclass
class LoadCheck:
    """Everything check_load found: typed errors (load raises the first), one line per
    individual problem (verify prints them), warnings, and the plan when nothing is wrong."""

    problems: list[AdapterError]
    lines: list[str]
    warnings: list[str]
    plan: LoadPlan | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_first(self) -> None:
        if self.problems:
            raise self.problems[0]


def check_load(model: nn.Module, files: AdapterFiles, base: BaseFingerprint, *, strict_base: bool = False,
               allow_nonfinite: bool = False, modules=None,
               targets_for: Callable[[LoraConfig], tuple[list[TargetedModule], list[str]]] | None = None,
               ) -> LoadCheck:
    """Run every check of loading `files` onto `model` (whose fingerprint is `base`).

    Raises for a config that cannot be used at all (bad fields, unsupported options, targets
    that match nothing); returns the rest. `modules` (a snapshot of named_modules) and
    `targets_for` (find_targets + resolve_saved_modules, cached) may come from the caller."""
    config = files.config
    config.validate()  # again: a LoraConfig is mutable, and a caller may have edited it
    config.check_supported()
    modules = list(walk(model, modules))
    if targets_for is None:
        targets, saved_modules = find_targets(model, config, modules), resolve_saved_modules(model, config, modules)
    else:
        targets, saved_modules = targets_for(config)
    check_variant_targets(config, targets)
    check_base_init(model, config, targets)  # PiSSA / OLoRA residuals: never into a tied or quantized weight
    check_offloaded_targets(model, config, targets, saved_modules, modules)  # no trained base tensor offloaded
    check = check_tensors(model, config, files.tensors, targets, saved_modules, modules, allow_nonfinite)
    source, config_source = str(files.weights_path), str(files.folder / CONFIG_NAME)
    problems: list[AdapterError] = []
    lines: list[str] = []
    warnings: list[str] = []

    recorded = BaseFingerprint.from_metadata(files.metadata)
    if recorded is not None and base.same_base_other_quantization(recorded):
        warnings.append(f"{source} was trained on {recorded.describe()}; this model is {base.describe()}: the same "
                        "base, quantized differently. The adapter fits; outputs differ from the training base's "
                        "by the quantization error only.")
    elif recorded is not None and not base.matches(recorded):
        message = (f"{source} was trained on base {recorded.describe()}, but this model is {base.describe()}. "
                   "Shapes may fit while outputs are wrong: load it onto the base it was trained on.")
        if strict_base:
            problems.append(BaseModelMismatchError(message + " (strict_base=True)"))
            lines.append(f"trained on base {recorded.describe()}, but this base is {base.describe()}")
        else:
            warnings.append(message + " Pass strict_base=True to make this an error.")

    base_note = _base_note(config, recorded)
    if check.unexpected or check.missing:
        parts = []
        if check.unexpected:
            parts.append(f"{len(check.unexpected)} unexpected key(s), e.g. {check.unexpected[:3]}")
        if check.missing:
            parts.append(f"{len(check.missing)} missing key(s), e.g. {check.missing[:3]}")
        problems.append(AdapterKeyMismatchError(
            f"{source} does not fit {type(model).__name__} with its own config: {'; '.join(parts)}. "
            f"The adapter was probably trained on another architecture{base_note}; load it onto that base, "
            "or check target_modules in adapter_config.json."))
        lines += [f"unexpected key {key}: no module of this base takes it" for key in check.unexpected]
        lines += [f"missing key {key}" for key in check.missing]
    if check.mismatched:
        shapes = [f"{dest.module} ({dest.role}{'.' + dest.param if dest.param else ''}): expected {list(shape)}, "
                  f"found {list(files.tensors[key].shape)}" for key, dest, shape in check.mismatched]
        more = f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""
        problems.append(AdapterShapeMismatchError(
            f"{source} has tensors that do not fit this model: {'; '.join(shapes[:5])}{more}. "
            f"The adapter was trained for another base or rank{base_note}. Load it onto the base it "
            "was trained on, or fix r / rank_pattern in adapter_config.json."))
        lines += [f"{dest.module}: {key} has shape {list(files.tensors[key].shape)}, this base needs {list(shape)}"
                  for key, dest, shape in check.mismatched]
    problems += check.values.errors(source, config_source)
    lines += check.values.lines()
    plan = None if problems else _plan(targets, saved_modules, check.expected, files.tensors)
    return LoadCheck(problems, lines, warnings, plan)


def _plan(targets, saved_modules, expected, tensors) -> LoadPlan:
    plan = LoadPlan(targets, saved_modules)
    for key, (dest, _) in expected.items():
        tensor = tensors[key]
        if dest.role in keys.LORA_ROLES:
            plan.factors.setdefault(dest.module, {})[dest.role] = tensor
        elif dest.role == "saved":
            plan.saved.setdefault(dest.module, {})[dest.param] = tensor
        elif dest.role == "base_weight":
            plan.base_weights[dest.module] = tensor
        elif dest.role == "bias":
            plan.biases[dest.module] = tensor
    return plan


def check_variant_targets(config: LoraConfig, targets: list[TargetedModule]) -> None:
    """The config's LoRA variant (core/variants.py) supports the kind of every module it targets."""
    variant = variant_of(config)
    unsupported = [t for t in targets if not variant.supports(t.kind)]
    if unsupported:
        kinds = sorted({t.kind.name for t in unsupported})
        raise UnsupportedAdapterError(
            f"{variant.flag}=True targets {kinds} layer(s) {[t.name for t in unsupported][:3]}, where adapterkit "
            f"does not implement {variant.name}. Exclude them (exclude_modules) or set {variant.flag}=False.")


def _base_note(config: LoraConfig, recorded: BaseFingerprint | None) -> str:
    notes = []
    if config.base_model_name_or_path:
        notes.append(f"its config names base {config.base_model_name_or_path!r}")
    if recorded is not None:
        notes.append(f"its file records base {recorded.describe()}")
    return f" ({'; '.join(notes)})" if notes else ""
