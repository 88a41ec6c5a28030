"""LoraConfig: a dataclass with PEFT's field names, serialized to sorted JSON.

The JSON file is the ecosystem's contract (PEFT, vLLM and the Hub read it), so
field names and meanings follow PEFT 0.21.2 exactly. Reading is tolerant of
fields a newer PEFT adds (one warning), but strict about the fields that change
outputs: a file without `r`, `lora_alpha` or `peft_type` is refused rather than
silently given a default.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from adapterkit.errors import AdapterConfigError, UnsupportedAdapterError

CONFIG_NAME = "adapter_config.json"
PEFT_FORMAT_VERSION = "0.21.2"  # the PEFT release whose format we write

# Fields a file must state: a default here would silently change outputs.
REQUIRED_ON_READ = ("peft_type", "r", "lora_alpha")

_BIAS_CHOICES = ("none", "all", "lora_only")

# Classifier heads PEFT trains alongside LoRA for these task types.
TASK_HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}


@dataclass
class LoraConfig:
    """Configuration of one LoRA adapter (Hu et al., 2021, arXiv:2106.09685).

    The update to a weight W of shape (out, in) is  ΔW = s · B A  with
    A: (r, in), B: (out, r) and s = lora_alpha / r  (or lora_alpha / √r with
    `use_rslora`, Kalajdzievski 2023, arXiv:2312.03732).
    """

    r: int = 8
    lora_alpha: float = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    task_type: str | None = None
    inference_mode: bool = False
    base_model_name_or_path: str | None = None
    revision: str | None = None
    peft_type: str = "LORA"
    # Options that change outputs and that adapterkit does not implement. They are
    # kept so a file round-trips, and refused when set (see `check_supported`).
    use_dora: bool = False
    lora_bias: bool = False
    layer_replication: list | None = None
    target_parameters: list[str] | None = None
    trainable_token_indices: Any = None
    use_qalora: bool = False
    alora_invocation_tokens: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        if isinstance(self.modules_to_save, (set, tuple)):
            self.modules_to_save = list(self.modules_to_save)
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
        if hasattr(self.peft_type, "value"):  # a PEFT enum handed over by ported code
            self.peft_type = self.peft_type.value
        if hasattr(self.task_type, "value"):
            self.task_type = self.task_type.value
        self.validate()

    # --- checks -------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise AdapterConfigError(f"LoraConfig.r must be a positive integer, got {self.r!r}.")
        if self.bias not in _BIAS_CHOICES:
            raise AdapterConfigError(
                f"LoraConfig.bias must be one of {_BIAS_CHOICES}, got {self.bias!r}."
            )
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise AdapterConfigError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        for name, rank in self.rank_pattern.items():
            if not isinstance(rank, int) or rank <= 0:
                raise AdapterConfigError(f"rank_pattern[{name!r}] must be a positive integer, got {rank!r}.")
        if isinstance(self.target_modules, str):
            for name in ("layers_to_transform", "layers_pattern"):
                if getattr(self, name) is not None:  # PEFT refuses this too; it would be ignored
                    raise AdapterConfigError(
                        f"LoraConfig.{name} cannot be used when target_modules is a string "
                        f"({self.target_modules!r}): give target_modules as a list of module names instead."
                    )
        if self.init_lora_weights not in (True, False, "gaussian") and not is_base_init(self.init_lora_weights):
            raise UnsupportedAdapterError(
                f"init_lora_weights={self.init_lora_weights!r} is not supported; "
                "use True (B = 0: a new adapter changes nothing), False (random B), 'gaussian', "
                "'pissa', 'pissa_niter_N' (N >= 1) or 'olora'."
            )

    def check_supported(self) -> None:
        """Refuse options that would change outputs and that we do not implement."""
        if str(self.peft_type).upper() != "LORA":
            raise UnsupportedAdapterError(
                f"peft_type {self.peft_type!r} is not supported: adapterkit loads LoRA adapters only."
            )
        unsupported = {
            "use_dora": self.use_dora,
            "lora_bias": self.lora_bias,
            "layer_replication": self.layer_replication,
            "target_parameters": self.target_parameters,
            "trainable_token_indices": self.trainable_token_indices,
            "use_qalora": self.use_qalora,
            "alora_invocation_tokens": self.alora_invocation_tokens,
        }
        used = [name for name, value in unsupported.items() if value]
        if used:
            raise UnsupportedAdapterError(
                f"This adapter uses {', '.join(used)}, which adapterkit does not implement; "
                "loading it anyway would give wrong outputs. Load it with PEFT, or retrain without these options."
            )

    # --- per-module values -----------------------------------------------------
    def rank_for(self, module_name: str) -> int:
        key = _pattern_key(self.rank_pattern, module_name)
        return self.rank_pattern[key] if key is not None else self.r

    def alpha_for(self, module_name: str) -> float:
        key = _pattern_key(self.alpha_pattern, module_name)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha

    def head_modules_to_save(self) -> list[str]:
        """modules_to_save plus the classifier heads PEFT adds for this task type."""
        names = list(self.modules_to_save or [])
        for head in TASK_HEADS.get(str(self.task_type), ()):
            if head not in names:
                names.append(head)
        return names

    # --- JSON ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["peft_version"] = PEFT_FORMAT_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> LoraConfig:
        missing = [name for name in REQUIRED_ON_READ if name not in data]
        if missing:
            raise AdapterConfigError(
                f"{source} lacks {', '.join(missing)}; these change the adapter's outputs, so "
                "adapterkit will not guess them. Add them to the file (PEFT writes all three)."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        # Fields PEFT writes that do not change a plain LoRA's outputs when left at their defaults.
        ignorable = {"peft_version", "auto_mapping", "megatron_config", "megatron_core", "loftq_config",
                     "eva_config", "corda_config", "lora_ga_config", "velora_config", "qalora_group_size",
                     "monteclora_config", "runtime_config", "use_bdlora", "arrow_config", "kasa_config",
                     "ensure_weight_tying"}
        unknown = sorted(set(data) - known - ignorable)
        if unknown:
            warnings.warn(
                f"{source} has fields this adapterkit does not know ({', '.join(unknown)}), probably "
                "from a newer PEFT; they are ignored. Check that the adapter does not rely on them.",
                stacklevel=3,
            )
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        try:
            config = cls(**kwargs)
        except (TypeError, AdapterConfigError) as exc:
            raise AdapterConfigError(f"{source} is not a valid LoRA config: {exc}") from exc
        return config

    @classmethod
    def from_json_file(cls, path: str) -> LoraConfig:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise AdapterConfigError(f"{path} is not valid JSON ({exc}); re-save the adapter.") from exc
        if not isinstance(data, dict):
            raise AdapterConfigError(f"{path} must hold a JSON object, found {type(data).__name__}.")
        return cls.from_dict(data, source=path)


_PISSA_NITER = re.compile(r"pissa_niter_[1-9][0-9]*")


def is_base_init(init: object) -> bool:
    """Does this init_lora_weights value read (and change) the base weight? (PiSSA, OLoRA: core.init)"""
    return isinstance(init, str) and (init in ("pissa", "olora") or _PISSA_NITER.fullmatch(init) is not None)


def _pattern_key(patterns: dict[str, Any], module_name: str) -> str | None:
    """PEFT's rule: a pattern key matches a module name ending in it at a dot boundary (regex allowed)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None
