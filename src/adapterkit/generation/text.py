"""One reply to a chat, whole or streamed token by token as the model produces it.

The prompt goes through the tokenizer's chat template when it has one (what an
instruct model and an adapter trained by `adapterkit train` expect), else the
messages' text is joined and encoded as is.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterkit.errors import SettingOutOfRangeError
from adapterkit.training.encoding import encode_prompt


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy, the same reply every time
    seed: int | None = None  # seeds torch before sampling, so a sampled reply repeats too

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SettingOutOfRangeError(
                f"max new tokens must be a whole number of at least 1, got {self.max_new_tokens!r}; "
                f"pass --max-tokens 1 or more"
            )
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise SettingOutOfRangeError(
                f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature!r}; "
                f"pass --temperature 0 for greedy or e.g. 0.7 to sample"
            )


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids the model sees before it answers `messages`."""
    if getattr(tokenizer, "chat_template", None):
        return encode_prompt(tokenizer, messages)
    text = "\n".join(message["content"] for message in messages)
    return [int(i) for i in tokenizer(text)["input_ids"]]


def _generate_kwargs(tokenizer, ids: list[int], settings: SamplingSettings) -> dict[str, Any]:
    input_ids = torch.tensor([ids], dtype=torch.long)  # (1, T)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": settings.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=float(settings.temperature))
    else:
        # Greedy: also clear sampling knobs a base's generation_config may carry, which
        # transformers would otherwise warn are ignored.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _seed(settings: SamplingSettings) -> None:
    if settings.seed is not None:
        torch.manual_seed(settings.seed)


@torch.no_grad()
def generate_text(model, tokenizer, messages: Sequence[dict[str, str]], settings: SamplingSettings) -> str:
    """The model's reply to `messages`, decoded without special tokens."""
    ids = prompt_ids(tokenizer, messages)
    _seed(settings)
    generate: Any = model.generate  # transformers models and AdapterModel have it; nn.Module's stubs do not
    output = generate(**_generate_kwargs(tokenizer, ids, settings))
    return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)


def stream_text(model, tokenizer, messages: Sequence[dict[str, str]], settings: SamplingSettings) -> Iterator[str]:
    """Yield the reply to `messages` in pieces as they are generated; joined, they equal generate_text's."""
    from transformers import TextIteratorStreamer

    ids = prompt_ids(tokenizer, messages)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with torch.no_grad():
                model.generate(**_generate_kwargs(tokenizer, ids, settings), streamer=streamer)
        except BaseException as exc:  # handed to the reading thread, which re-raises it
            failure.append(exc)
            streamer.end()  # otherwise the reader would wait for text forever

    _seed(settings)  # torch's CPU generator is process-wide: seeding here seeds the producer
    worker = threading.Thread(target=produce, name="adapterkit-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        worker.join()
    if failure:
        raise failure[0]
