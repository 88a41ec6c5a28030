"""The OpenAI request bodies the server accepts, as pydantic models.

Unknown fields are ignored, as OpenAI-compatible servers do; fields whose meaning
this server does not implement (logprobs, penalties, tools...) are refused with a
400 naming them, rather than silently ignored. One extension: LoRAX's
`merged_adapters`, a weighted combination of adapters built for the request (the
`openai` client sends it through `extra_body`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapterkit.core.combine import COMBINATION_TYPES, DENSITY_TYPES, SVD_TYPES

# Accepted by OpenAI, not implemented here: a request that sets them gets a 400.
UNSUPPORTED = {
    "logprobs": "logprobs", "top_logprobs": "logprobs", "echo": "echo", "best_of": "best_of",
    "logit_bias": "logit_bias", "suffix": "suffix", "tools": "tool calling", "functions": "tool calling",
    "response_format": "response_format", "frequency_penalty": "penalties", "presence_penalty": "penalties",
}
MAX_STOP = 16
MAX_N = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


# The combination types a request may name: LoRAX's four (linear, ties, dare_linear, dare_ties)
# and PEFT's other cheap ones. The SVD types are left to `adapterkit combine`: they factor every
# adapted module's full ΔW (two rank-8 SmolLM2 adapters on q, k, v, o: 10 s for svd, 20 s for
# ties_svd on a 2-core CPU, against 40 to 300 ms for the others).
PER_REQUEST_STRATEGIES = ("linear", "cat", "ties", "dare_linear", "dare_ties", "magnitude_prune")
MAX_MERGED_ADAPTERS = 16
_Weight = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # no bools, strings, NaN or infinities
_AdapterId = Annotated[str, Field(strict=True, min_length=1, max_length=200)]


class MergedAdapters(BaseModel):
    """LoRAX's `merged_adapters`: the adapters `ids` combined with `weights` by `merge_strategy`,
    as PEFT's add_weighted_adapter does. `seed` (adapterkit's) fixes DARE's random masks, so one
    definition always gives one adapter. Unknown fields are refused: a misspelt `density` must not
    silently give another combination."""

    model_config = ConfigDict(extra="forbid")

    ids: list[_AdapterId] = Field(min_length=1, max_length=MAX_MERGED_ADAPTERS)
    weights: list[_Weight] | None = Field(default=None, validate_default=True)  # LoRAX's default: 1 each
    merge_strategy: str | None = "linear"
    majority_sign_method: Literal["total", "frequency"] | None = "total"
    density: float | None = Field(default=None, strict=True, allow_inf_nan=False, validate_default=True)
    seed: int = Field(default=0, strict=True, ge=0, le=2**63 - 1)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            raise ValueError(f"unknown field {', '.join(map(repr, unknown))}; the fields are "
                             f"{', '.join(cls.model_fields)}")
        return data

    @field_validator("ids")
    @classmethod
    def _distinct(cls, ids: list[str]) -> list[str]:
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"{repeated} appear more than once; name each adapter once and add up its weights")
        return ids

    @field_validator("weights")
    @classmethod
    def _one_per_id(cls, weights: list[float] | None, info: ValidationInfo) -> list[float]:
        ids = info.data.get("ids")
        if ids is None:  # ids failed: that error is reported
            return weights or []
        if weights is None:
            return [1.0] * len(ids)
        if len(weights) != len(ids):
            raise ValueError(f"{len(weights)} weights for {len(ids)} ids; give one weight per id, in the same order")
        return weights

    @field_validator("merge_strategy")
    @classmethod
    def _known_strategy(cls, strategy: str | None) -> str:
        strategy = "linear" if strategy is None else strategy  # LoRAX's client sends null for its default
        if strategy in PER_REQUEST_STRATEGIES:
            return strategy
        if strategy in SVD_TYPES:
            raise ValueError(f"{strategy!r} factors every module's ΔW by SVD (seconds per combination), too slow "
                             "to run per request; combine offline with `adapterkit combine` and load the result, "
                             f"or use one of {', '.join(PER_REQUEST_STRATEGIES)}")
        known = "" if strategy not in COMBINATION_TYPES else " per request"
        raise ValueError(f"{strategy!r} is not a combination type{known}; use one of "
                         f"{', '.join(PER_REQUEST_STRATEGIES)}")

    @field_validator("density")
    @classmethod
    def _density(cls, density: float | None, info: ValidationInfo) -> float | None:
        if density is not None and not 0 < density <= 1:
            raise ValueError(f"density is the fraction of entries kept: give a number in (0, 1], not {density}")
        if density is None and info.data.get("merge_strategy") in DENSITY_TYPES:
            raise ValueError(f"merge_strategy {info.data['merge_strategy']!r} prunes the adapters: give density, "
                             "the fraction of entries kept, in (0, 1]")
        return density


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)
    merged_adapters: MergedAdapters | None = None  # LoRAX's extension; `model` then names the base

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return stop

    def unsupported(self) -> list[str]:
        """Names of set fields this server does not implement (a zero penalty or false echo is fine)."""
        extra = self.model_extra or {}
        bad = []
        for key, value in extra.items():
            if key not in UNSUPPORTED:
                continue
            harmless = value in (None, 1) if key == "best_of" else value in (None, False, 0, [], {})
            if not harmless:
                bad.append(key)
        return sorted(bad)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"message content part of type {part.get('type')!r}: only text parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class LoadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False  # vLLM's flag for replacing a loaded adapter under the same name


class UnloadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
