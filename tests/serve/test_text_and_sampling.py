"""Text assembly (stop strings, held-back tails) and per-request sampling."""

from __future__ import annotations

import random

import torch
from serve_helpers import tiny_tokenizer

from adapterkit.serve.sampling import SamplingParams, sample
from adapterkit.serve.text import TextAssembler


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_streamed_text_equals_the_whole_text_cut_at_the_first_stop_string():
    tokenizer = tiny_tokenizer()
    rng = random.Random(0)
    for _ in range(200):  # generated cases: random texts, stops taken from inside them or absent
        words = [f"w{rng.randrange(5, 40)}" for _ in range(rng.randrange(1, 12))]
        text = " ".join(words)
        i, j = sorted(rng.sample(range(len(text) + 1), 2))
        stops = [text[i:j] or "x", "zz"] if rng.random() < 0.7 else ["never"]
        assembler = TextAssembler(tokenizer, stops)
        streamed = ""
        for token in _ids(tokenizer, text):
            streamed += assembler.add(token)
            if assembler.stopped:
                break
        streamed += assembler.flush()
        cuts = [text.find(s) for s in stops if s and text.find(s) >= 0]
        expected = text[: min(cuts)] if cuts else text
        assert streamed == expected, (text, stops)
        assert assembler.stopped == bool(cuts)


def test_a_tail_that_could_become_a_stop_string_is_held_back():
    tokenizer = tiny_tokenizer()
    assembler = TextAssembler(tokenizer, ["w7 w8"])
    assert assembler.add(_ids(tokenizer, "w6")[0]) == "w6"
    assert assembler.add(_ids(tokenizer, "w7")[0]) == " "  # "w7" may start "w7 w8": held back
    assert assembler.add(_ids(tokenizer, "w9")[0]) == "w7 w9"
    assert assembler.add(_ids(tokenizer, "w7")[0]) == " "
    assert assembler.add(_ids(tokenizer, "w8")[0]) == "" and assembler.stopped
    assert assembler.flush() == ""


def test_sampling_greedy_seeded_and_top_p():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy = SamplingParams(max_tokens=1, temperature=0.0)
    assert sample(logits, [greedy] * 4) == logits.argmax(-1).tolist()
    draws = [sample(logits[:1], [SamplingParams(max_tokens=1, temperature=1.0, seed=5)])[0] for _ in range(3)]
    assert len(set(draws)) == 1  # one seed, one draw, whatever else is in the batch
    one = SamplingParams(max_tokens=1, temperature=1.0, seed=3)
    batch = sample(logits, [SamplingParams(max_tokens=1, temperature=0.0), one, greedy, greedy])
    assert batch[1] == sample(logits[1:2], [SamplingParams(max_tokens=1, temperature=1.0, seed=3)])[0]
    peaked = torch.full((1, 50), -10.0)
    peaked[0, 7], peaked[0, 8] = 5.0, 4.0
    tight = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1)
    assert {sample(peaked, [tight])[0] for _ in range(30)} == {7}  # top_p keeps only the most likely token
    loose = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, seed=1)
    assert {sample(peaked, [loose])[0] for _ in range(60)} >= {7, 8}
