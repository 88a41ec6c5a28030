"""One request's generation: its sequences in the engine, their tokens turned to text.

A request with P prompts and n choices becomes P·n engine sequences (choice index
p·n + j, as OpenAI numbers them). The engine thread reports tokens through each
sequence's sink, which hands them to the request's event loop; `events()` yields
text deltas and finish reasons per choice. Stop strings are found here, on text:
the sequence is then cancelled, and its engine row freed before the next pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from adapterkit.serve.engine import Engine, Sequence
from adapterkit.serve.errors import BadRequestError, ServeError
from adapterkit.serve.sampling import SamplingParams
from adapterkit.serve.text import TextAssembler


@dataclass
class Choice:
    index: int
    sequence: Sequence
    text: TextAssembler
    tokens: int = 0
    finish_reason: str | None = None
    content: list[str] = field(default_factory=list)  # the deltas, for non-streaming replies


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class EngineFailure(ServeError):
    """The engine failed the pass this request was in (the server goes on)."""


def check_lengths(prompt: list[int], max_tokens: int | None, max_model_len: int, param: str = "prompt") -> int:
    """The max_tokens this prompt gets: as asked, or what is left of --max-model-len (400 if nothing fits)."""
    if not prompt:
        raise BadRequestError("the prompt is empty (0 tokens); send some text", param=param)
    if len(prompt) >= max_model_len:
        raise BadRequestError(
            f"the prompt has {len(prompt)} tokens, but this server's --max-model-len is {max_model_len} "
            f"(prompt and completion together); shorten the prompt", param=param, code="context_length_exceeded")
    room = max_model_len - len(prompt)
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise BadRequestError(
            f"max_tokens is {max_tokens}, but the prompt has {len(prompt)} tokens and --max-model-len is "
            f"{max_model_len}, so at most {room} can be generated; lower max_tokens", param="max_tokens",
            code="context_length_exceeded")
    return max_tokens


class GenerationRun:
    def __init__(self, engine: Engine, tokenizer, prompts: list[list[int]], adapter: str, *, n: int,
                 max_tokens: list[int], temperature: float, top_p: float, seed: int | None, stop: list[str],
                 ignore_eos: bool = False) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.choices: list[Choice] = []
        for p, prompt in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                # Choice j of a seeded request draws from seed + j: n distinct samples, reproducible.
                params = SamplingParams(max_tokens=max_tokens[p], temperature=temperature, top_p=top_p,
                                        seed=None if seed is None else seed + j, ignore_eos=ignore_eos)
                sequence = Sequence(prompt, adapter, params, self._sink_for(index))
                self.choices.append(Choice(index, sequence, TextAssembler(tokenizer, stop)))

    def start(self) -> None:
        self.engine.submit([c.sequence for c in self.choices])  # all or none (QueueFullError)

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.finish_reason is None:
                self.engine.cancel(choice.sequence)

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, sum(c.tokens for c in self.choices))

    def _sink_for(self, index: int):
        def sink(token: int | None, reason: str | None, error: str | None) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, token, reason, error))
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass
        return sink

    async def events(self) -> AsyncIterator[tuple[Choice, str, str | None]]:
        """(choice, new text, finish reason or None) until every choice has finished."""
        open_choices = len(self.choices)
        while open_choices:
            index, token, reason, error = await self.queue.get()
            choice = self.choices[index]
            if choice.finish_reason is not None:
                continue  # a token that raced a stop-string cancel
            if error is not None:
                self.cancel()
                raise EngineFailure(f"generation failed: {error}")
            delta = ""
            if token is not None:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                choice.tokens += 1
                if not (reason == "stop" and token in self.engine.eos_token_ids):
                    delta = choice.text.add(token)
                if choice.text.stopped and reason is None:
                    reason = "stop"
                    self.engine.cancel(choice.sequence)
            if reason == "cancelled":
                reason = "abort"
            if reason is not None:
                delta += choice.text.flush()
                choice.finish_reason = reason
                open_choices -= 1
            if delta:
                choice.content.append(delta)
            if delta or reason is not None:
                yield choice, delta, reason
