"""Two built-in word-game tasks for the demo: same input, different rule.

The user message is three words from a small vocabulary, e.g. "cat dog sun".
  - "reverse" answers with the words in reverse order: "sun dog cat"
  - "shout"   answers with the words in capitals:       "CAT DOG SUN"
Nothing in the prompt says which rule applies, so the base model scores ~0%
and the adapter alone decides the behaviour: switching adapters on the same
prompt visibly switches the answer. Every word occurs in training; the
held-out set consists of word triples never seen in training.

Measured on 2 CPU cores (torch threads=2) with SmolLM2-135M-Instruct and
`recommended_lora_config()`, held-out exact match:
  base model              0% on both tasks
  FULL  (48 steps x 8)    100% reverse, 100% shout (seeds 0 and 1); ~40-50 s of training each
  QUICK (16 steps x 8)    100% reverse, 88% shout (seed 0); ~15 s each
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from adapterkit.core.config import LoraConfig
from adapterkit.training.data import ChatExample
from adapterkit.training.trainer import TrainConfig

# A short system prompt keeps sequences (and so training time) short, and
# replaces SmolLM2's default 19-token one identically for both tasks.
SYSTEM_PROMPT = "Word game."
VOCABULARY = (
    "cat dog sun tree book fish bird car rain moon star milk door hat cup "
    "pen box egg key map ship road lamp bell rock leaf king frog bear cake"
).split()
WORDS_PER_PROMPT = 3

RULES = {
    "reverse": lambda words: " ".join(reversed(words)),
    "shout": lambda words: " ".join(words).upper(),
}
TASK_NAMES = tuple(RULES)


@dataclass(frozen=True)
class TaskSize:
    steps: int
    batch_size: int
    eval_examples: int


FULL = TaskSize(steps=48, batch_size=8, eval_examples=50)
QUICK = TaskSize(steps=16, batch_size=8, eval_examples=16)


@dataclass(frozen=True)
class Task:
    name: str
    train: list[ChatExample]
    eval: list[ChatExample]
    train_config: TrainConfig
    max_new_tokens: int = 12  # the longest answer is 3 words, ~6-9 tokens plus the end-of-turn token


def recommended_lora_config() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def make_task(name: str, quick: bool = False, seed: int = 0) -> Task:
    """The train and held-out sets of task `name`, identical for the same (name, quick, seed)."""
    if name not in RULES:
        raise ValueError(f"unknown task {name!r}; built-in tasks are {list(TASK_NAMES)}")
    size = QUICK if quick else FULL
    train_count = size.steps * size.batch_size  # one pass, each example seen once
    triples = list(itertools.permutations(VOCABULARY, WORDS_PER_PROMPT))
    random.Random(f"{name}:{seed}").shuffle(triples)
    # Disjoint by construction: held-out triples come first, training triples after.
    held_out = triples[: size.eval_examples]
    training = triples[size.eval_examples: size.eval_examples + train_count]
    rule = RULES[name]

    def chat(words: tuple[str, ...]) -> ChatExample:
        return ChatExample.from_prompt(" ".join(words), rule(words), system=SYSTEM_PROMPT)

    config = TrainConfig(
        steps=size.steps, batch_size=size.batch_size, lr=2e-3, warmup_steps=max(1, size.steps // 10),
        decay="cosine", seed=seed,
    )
    return Task(name=name, train=[chat(t) for t in training], eval=[chat(t) for t in held_out], train_config=config)
