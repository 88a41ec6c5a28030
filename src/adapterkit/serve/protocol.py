"""The OpenAI request bodies the server accepts, as pydantic models.

Unknown fields are ignored, as OpenAI-compatible servers do; fields whose meaning
this server does not implement (logprobs, penalties, tools...) are refused with a
400 naming them, rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
