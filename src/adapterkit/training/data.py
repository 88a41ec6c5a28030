"""Training examples as chats, read from and written to JSONL.

Each line is either `{"prompt": str, "response": str}` or
`{"messages": [{"role": ..., "content": ...}, ...]}` ending with an assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from adapterkit.training.errors import TrainingDataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatExample:
    """One conversation; the last message is the assistant response to learn or to check."""

    messages: tuple[dict[str, str], ...]

    @classmethod
    def from_prompt(cls, prompt: str, response: str, system: str | None = None) -> ChatExample:
        head = ({"role": "system", "content": system},) if system is not None else ()
        return cls(head + ({"role": "user", "content": prompt}, {"role": "assistant", "content": response}))

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return list(self.messages[:-1])

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]


def example_from_record(record: object, where: str = "record") -> ChatExample:
    """Validate one decoded JSON value; `where` names it in errors (e.g. "data.jsonl:12")."""
    if not isinstance(record, dict):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return ChatExample(tuple(_check_messages(record["messages"], where)))
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise TrainingDataError(
            f'{where}: needs string fields "prompt" and "response", or a "messages" list; '
            f"found keys {sorted(record)}"
        )
    return ChatExample.from_prompt(prompt, response)


def _check_messages(messages: object, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f'{where}: "messages" must be a non-empty list')
    checked = []
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            raise TrainingDataError(
                f'{where}: messages[{i}] must be {{"role": one of {list(ROLES)}, "content": str}}, got {message!r}'
            )
        checked.append({"role": message["role"], "content": message["content"]})
    if checked[-1]["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last message must be the assistant response to learn")
    return checked


def load_jsonl(path: str | Path) -> list[ChatExample]:
    """Read every non-blank line of `path` as one example."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrainingDataError(f"{where}: not valid JSON ({err.msg})") from err
            examples.append(example_from_record(record, where))
    return examples


def write_jsonl(path: str | Path, examples: Iterable[ChatExample]) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({"messages": list(example.messages)}, ensure_ascii=False) + "\n")
