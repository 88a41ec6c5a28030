"""The type and range of every LoraConfig field, each checked with a message that names the
field, its value (shortened) and what is expected.

A config file is hostile input: JSON can put any type in any field. These checks run before
a LoraConfig exists, so nothing downstream (targeting, the layer math, the file writer) ever
meets a string where it expects a number, or a regular expression that does not compile.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

from adapterkit.errors import AdapterConfigError, UnsupportedAdapterError

# A rank beyond this is a typo or an attack, not an adapter (vLLM serves up to 512).
MAX_RANK = 1 << 16
BIAS_CHOICES = ("none", "all", "lora_only")
INIT_CHOICES = (True, False, "gaussian")

# The regular expressions that embed user patterns. The checks compile exactly these, so a
# pattern that passes here cannot fail later in core.config or core.targeting.
RANK_ALPHA_KEY_REGEX = r"(.*\.)?({key})$"  # rank_pattern / alpha_pattern keys (PEFT's rule)
LAYERS_PATTERN_REGEX = r"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\."  # layers_pattern entries


class _ShortRepr(reprlib.Repr):
    """reprlib's size limits, plus integers too long for Python to print in decimal."""

    def repr_int(self, x, level):
        if x.bit_length() > 256:  # str() refuses past 4300 digits; the size is what matters
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_short = _ShortRepr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3
_short.maxlist = _short.maxdict = 4


class OversizedInteger:
    """A JSON integer too long for Python to convert (over 4000 digits); every field refuses it."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def shown(value: Any) -> str:
    """The value as an error message shows it: shortened, depth-limited, with its type."""
    try:
        text = _short.repr(value)
    except (ValueError, RecursionError):
        text = "<unprintable>"
    kind = "int" if isinstance(value, OversizedInteger) else type(value).__name__
    return f"{text} ({kind})"


def config_error(field: str, value: Any, expected: str,
                 kind: type[AdapterConfigError] = AdapterConfigError) -> AdapterConfigError:
    return kind(f"field {field} is {shown(value)}; expected {expected}.")


_PISSA_NITER = re.compile(r"pissa_niter_[1-9][0-9]*")


def is_base_init(init: object) -> bool:
    """Does this init_lora_weights value read (and change) the base weight? (PiSSA, OLoRA: core.init)"""
    return isinstance(init, str) and (init in ("pissa", "olora") or _PISSA_NITER.fullmatch(init) is not None)


# --- predicates -------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    # Tuples and sets are accepted from Python code; LoraConfig turns them into lists.
    return isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value)


def _regex_problem(pattern: str, template: str | None = None, slot: str = "pattern") -> str | None:
    try:
        re.compile(template.format(**{slot: pattern}) if template else pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        return f"a valid regular expression ({type(exc).__name__}: {str(exc)[:80]})"
    return None


# --- one rule per field: value -> None when fine, else what is expected ---------------
def _rank(value: Any) -> str | None:
    if _is_int(value) and 0 < value <= MAX_RANK:
        return None
    return f"a positive integer up to {MAX_RANK}"


def _number(value: Any) -> str | None:
    if _is_number(value):
        try:
            float(value)  # a 400-digit int is a number, but no float holds it
            return None
        except OverflowError:
            pass
    return "a number (int or float) within float range"


def _dropout(value: Any) -> str | None:
    return None if _is_number(value) and 0.0 <= value < 1.0 else "a number in [0, 1)"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _optional_str(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "a string or null"


def _names_or_regex(value: Any) -> str | None:
    """target_modules / exclude_modules: a list of names, or one regex over the full name."""
    if value is None or _is_str_list(value):
        return None
    if isinstance(value, str):
        return None if value == "all-linear" else _regex_problem(value)
    return "a list of module names, a regular expression string, or null"


def _names(value: Any) -> str | None:
    if value is None or _is_str_list(value):
        return None
    if isinstance(value, str):  # PEFT iterates it one character at a time; refuse rather than guess
        return f"a list of module names, e.g. [{value!r}] (a bare string is not a list)"
    return "a list of module names, or null"


def _layers(value: Any) -> str | None:
    expected = "a non-negative integer, a list of them, or null"
    if value is None:
        return None
    items = [value] if _is_int(value) else value
    if isinstance(items, (list, tuple)) and all(_is_int(i) and i >= 0 for i in items):
        return None
    return expected


def _layers_pattern(value: Any) -> str | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not _is_str_list(items):
        return "a string, a list of strings, or null"
    for item in items:
        problem = _regex_problem(item, LAYERS_PATTERN_REGEX)
        if problem:
            return f"{problem} in entry {item!r}"
    return None


def _pattern_map(value_rule: Callable[[Any], str | None], what: str) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return f"an object mapping module-name patterns to {what}"
        for key, item in value.items():
            if not isinstance(key, str):
                return f"string keys, found key {shown(key)}"
            problem = _regex_problem(key, RANK_ALPHA_KEY_REGEX, "key")
            if problem:
                return f"{problem} as key {key!r}"
            if value_rule(item):
                return f"{what} as values, found {shown(item)} at key {key!r}"
        return None
    return rule


def _bias(value: Any) -> str | None:
    return None if isinstance(value, str) and value in BIAS_CHOICES else f"one of {BIAS_CHOICES}"


def _init(value: Any) -> str | None:
    if isinstance(value, (bool, str)) and (value in INIT_CHOICES or is_base_init(value)):
        return None
    return ("true (B = 0), false (random B), 'gaussian', 'pissa', 'pissa_niter_N' (N >= 1) or 'olora'; "
            "PEFT's other initialisations are not supported")


def _optional_list(value: Any) -> str | None:
    return None if value is None or isinstance(value, (list, tuple)) else "a list or null"


FIELD_RULES: dict[str, Callable[[Any], str | None]] = {
    "r": _rank,
    "lora_alpha": _number,
    "target_modules": _names_or_regex,
    "exclude_modules": _names_or_regex,
    "lora_dropout": _dropout,
    "fan_in_fan_out": _flag,
    "bias": _bias,
    "use_rslora": _flag,
    "modules_to_save": _names,
    "init_lora_weights": _init,
    "layers_to_transform": _layers,
    "layers_pattern": _layers_pattern,
    "rank_pattern": _pattern_map(_rank, f"positive integers up to {MAX_RANK}"),
    "alpha_pattern": _pattern_map(_number, "numbers"),
    "task_type": _optional_str,
    "inference_mode": _flag,
    "base_model_name_or_path": _optional_str,
    "revision": _optional_str,
    "peft_type": lambda v: None if isinstance(v, str) else "a string such as 'LORA'",
    # Options adapterkit refuses when set (LoraConfig.check_supported); typed so that
    # "false" (a string, so truthy) cannot pass for false.
    "use_dora": _flag,
    "lora_bias": _flag,
    "use_qalora": _flag,
    "layer_replication": _optional_list,
    "target_parameters": _optional_list,
}


def check_fields(values: Mapping[str, Any]) -> None:
    """Raise AdapterConfigError for the first field of the wrong type or range."""
    for field, rule in FIELD_RULES.items():
        if field in values:
            problem = rule(values[field])
            if problem:
                # An init PEFT has and adapterkit lacks is "unsupported", as before these checks existed.
                kind = UnsupportedAdapterError if field == "init_lora_weights" else AdapterConfigError
                raise config_error(field, values[field], problem, kind)
