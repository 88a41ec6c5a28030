"""The one mapping between adapterkit's in-memory names and PEFT's on-disk keys.

In memory (names relative to the user's model):
    <path>.lora.lora_A.<adapter>                 the A factor of a LoRA'd module
    <path>.lora.lora_B.<adapter>                 the B factor
    <path>.lora.<attr>.<adapter>                 a variant's own tensor (DoRA: lora_magnitude_vector)
    <path>.modules_to_save.<adapter>.<param>     a module trained in full
    <path>.bias                                  a bias trained with bias="all"/"lora_only"
On disk (PEFT 0.21.2, adapter name stripped; vLLM reads the same):
    base_model.model.<path>.lora_A.weight        (.lora_embedding_A for embeddings)
    base_model.model.<path>.lora_B.weight        (.lora_embedding_B)
    base_model.model.<path>.lora_magnitude_vector    (DoRA adapters, every kind: the magnitude, (out,))
    base_model.model.<path>.<param>
    base_model.model.<path>.base_layer.bias      (a LoRA'd module: PEFT wraps it)
    base_model.model.<path>.bias                 (any other module)
    base_model.model.<path>.base_layer.weight    (read only: PEFT's saved embedding layers)

Both directions are pure functions over this data; save and load both use them (through
model/state.py, which decides which of these keys an adapter has).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterkit.core.variants import variant_tensors

PREFIX = "base_model.model."

# The LoRA factors' on-disk suffix, per module kind (core.kinds.ModuleKind.name).
LORA_SUFFIX = {
    "linear": {"A": "lora_A.weight", "B": "lora_B.weight"},
    "conv1d": {"A": "lora_A.weight", "B": "lora_B.weight"},
    "quantized_linear": {"A": "lora_A.weight", "B": "lora_B.weight"},  # bitsandbytes 4-bit / 8-bit
    "embedding": {"A": "lora_embedding_A", "B": "lora_embedding_B"},
}
# role -> on-disk suffix, per module kind: the factors, and every variant's own tensors under the
# suffix the variant declares (core.variants: DoRA's "M" -> "lora_magnitude_vector"), the same at every kind.
FACTOR_SUFFIX = {kind: {**factors, **{t.role: t.disk_suffix for t in variant_tensors()}}
                 for kind, factors in LORA_SUFFIX.items()}
SUFFIX_FACTOR = {suffix: factor for table in FACTOR_SUFFIX.values() for factor, suffix in table.items()}
# Every role a module's LoraAdapters holds (A, B and the variants' own): a load writes these through it.
LORA_ROLES = frozenset(SUFFIX_FACTOR.values())
WRAPPED_BIAS = "base_layer.bias"
# PEFT's save_embedding_layers="auto" also writes the full base weight of a LoRA'd
# embedding / lm_head (for resized vocabularies): accepted on load, never written.
WRAPPED_WEIGHT = "base_layer.weight"


@dataclass(frozen=True)
class TensorDestination:
    """Where one on-disk tensor goes in the model: its role, its module, and for a saved module its parameter."""

    # "A", "B", a variant's role ("M": DoRA's magnitude), "saved" (a modules_to_save parameter),
    # "bias", "base_weight" or "ignored"
    role: str
    module: str  # the module's path in the user's model
    param: str = ""  # for "saved": the parameter name inside the module


def factor_key(module: str, kind: str, factor: str) -> str:
    """`kind` is a core.kinds.ModuleKind's name."""
    return f"{PREFIX}{module}.{FACTOR_SUFFIX[kind][factor]}"


def saved_key(module: str, param: str) -> str:
    return f"{PREFIX}{module}.{param}"


def bias_key(module: str, lora_wrapped: bool) -> str:
    return f"{PREFIX}{module}.{WRAPPED_BIAS if lora_wrapped else 'bias'}"


def parse_key(key: str, saved_modules: set[str]) -> TensorDestination | None:
    """The in-memory meaning of an on-disk key, or None if it has none.

    `saved_modules` are the module paths trained in full (modules_to_save):
    their keys are `<module>.<param>` and need them to be told apart from biases.
    """
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX):]
    for suffix, factor in SUFFIX_FACTOR.items():
        if rest.endswith("." + suffix):
            return TensorDestination(factor, rest[: -len(suffix) - 1])
    for module in saved_modules:
        if rest.startswith(module + "."):
            return TensorDestination("saved", module, rest[len(module) + 1:])
    if rest.endswith("." + WRAPPED_WEIGHT):
        return TensorDestination("base_weight", rest[: -len(WRAPPED_WEIGHT) - 1])
    if rest.endswith("." + WRAPPED_BIAS):
        return TensorDestination("bias", rest[: -len(WRAPPED_BIAS) - 1])
    if rest.endswith(".bias"):
        return TensorDestination("bias", rest[: -len(".bias")])
    return None
