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

from adapterkit.core.config_checks import RANK_ALPHA_KEY_REGEX, check_fields, config_error
from adapterkit.core.config_checks import is_base_init as is_base_init  # re-exported: callers import it from here
from adapterkit.core.config_json import read_json_object
from adapterkit.errors import AdapterConfigError, AdapterFileUnreadableError, UnsupportedAdapterError

CONFIG_NAME = "adapter_config.json"
PEFT_FORMAT_VERSION = "0.21.2"  # the PEFT release whose format we write

# Fields a file must state: a default here would silently change outputs.
REQUIRED_ON_READ = ("peft_type", "r", "lora_alpha")

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
        check_fields(vars(self))  # before normalising: sorted() of a mixed-type set would raise
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
        task_value = getattr(self.task_type, "value", None)
        if task_value is not None:
            self.task_type = task_value
        self.validate()

    # --- checks -------------------------------------------------------------
    def validate(self) -> None:
        """Types and ranges of every field (core.config_checks), then how fields combine."""
        check_fields(vars(self))
        if isinstance(self.target_modules, str):
            for name in ("layers_to_transform", "layers_pattern"):
                if getattr(self, name) is not None:  # PEFT refuses this too; it would be ignored
                    raise AdapterConfigError(
                        f"LoraConfig.{name} cannot be used when target_modules is a string "
                        f"({self.target_modules!r}): give target_modules as a list of module names instead."
                    )

    def check_supported(self) -> None:
        """Refuse options that would change outputs and that we do not implement."""
        if str(self.peft_type).upper() != "LORA":
            raise UnsupportedAdapterError(
                f"peft_type {self.peft_type!r} is not supported: adapterkit loads LoRA adapters only."
            )
        unsupported = {
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
        kwargs: dict[str, Any] = {}
        try:
            check_fields(data)  # before copying: a value nested too deep would overflow deepcopy
            for key, value in data.items():
                if key in known:
                    kwargs[key] = _copied(key, value)
            config = cls(**kwargs)
        except AdapterConfigError as exc:
            raise type(exc)(f"{source} is not a valid LoRA config: {exc}") from exc
        # Warned only once the config is valid: a refused file gets one message, not two.
        unknown = sorted(set(data) - known - _IGNORABLE)
        if unknown:
            warnings.warn(
                f"{source} has fields this adapterkit does not know ({', '.join(unknown)}), probably "
                "from a newer PEFT; they are ignored. Check that the adapter does not rely on them.",
                stacklevel=3,
            )
        return config

    @classmethod
    def from_json_file(cls, path: str) -> LoraConfig:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise AdapterFileUnreadableError(
                f"{path} cannot be read ({exc.strerror or exc}); check its permissions, or save the adapter again."
            ) from exc
        return cls.from_dict(read_json_object(raw, path), source=path)


# Fields PEFT writes that do not change a plain LoRA's outputs when left at their defaults.
_IGNORABLE = {"peft_version", "auto_mapping", "megatron_config", "megatron_core", "loftq_config",
              "eva_config", "corda_config", "lora_ga_config", "velora_config", "qalora_group_size",
              "monteclora_config", "runtime_config", "use_bdlora", "arrow_config", "kasa_config",
              "ensure_weight_tying"}


def _copied(key: str, value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except RecursionError:
        raise config_error(key, value, "a value nested a few levels deep at most") from None


def _pattern_key(patterns: dict[str, Any], module_name: str) -> str | None:
    """PEFT's rule: a pattern key matches a module name ending in it at a dot boundary (regex allowed)."""
    for key in patterns:
        if re.match(RANK_ALPHA_KEY_REGEX.format(key=key), module_name):
            return key
    return None
