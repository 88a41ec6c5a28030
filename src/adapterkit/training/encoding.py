"""Chats to token ids with the tokenizer's own chat template, and labels that teach only responses.

Every assistant turn is found by rendering the chat up to that turn with
`add_generation_prompt=True` (the prompt the model will see at inference) and
then including the turn: the difference is the response, including the
template's end-of-turn token, so the trained model learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapterkit.training.data import ChatExample
from adapterkit.training.errors import ChatTemplateError

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on assistant tokens

    @property
    def response_length(self) -> int:
        """Tokens from the first labelled token to the end."""
        first = next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX)
        return len(self.labels) - first


def chat_token_ids(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
            f"(a Jinja string) or use an instruct model's tokenizer"
        )
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt
    )
    # transformers 5 returns a BatchEncoding (a dict); older versions a plain list.
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]


def encode_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """What the model sees before it answers: the chat plus the assistant header."""
    return chat_token_ids(tokenizer, messages, add_generation_prompt=True)


def encode_example(tokenizer, example: ChatExample) -> EncodedExample:
    """Token ids of the whole chat; labels on every assistant turn, IGNORE_INDEX elsewhere."""
    messages = list(example.messages)
    input_ids = chat_token_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = encode_prompt(tokenizer, messages[:turn])
        through_turn = chat_token_ids(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        if input_ids[: len(prompt)] != prompt or input_ids[: len(through_turn)] != through_turn:
            raise ChatTemplateError(
                "the chat template renders an earlier part of a conversation differently from the "
                "whole conversation, so response tokens cannot be located; use a template whose "
                "renders are prefixes of each other (most instruct templates are)"
            )
        start, end = len(prompt), len(through_turn)
        labels[start:end] = input_ids[start:end]
    return EncodedExample(input_ids=input_ids, labels=labels)
