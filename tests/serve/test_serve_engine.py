"""The engine's scheduling, turn by turn (no thread): arrivals never starve running rows, finished
rows leave at once, a failed pass fails only its sequences, and a full queue refuses whole requests."""

from __future__ import annotations

import pytest

from adapterkit import AdapterModel
from adapterkit.serve.engine import Engine, Sequence
from adapterkit.serve.errors import QueueFullError
from adapterkit.serve.sampling import SamplingParams
from helpers import tiny_llama


def _engine(**options) -> Engine:
    options = {"max_batch": 3, "max_model_len": 32, "max_queue": 4, "eos_token_ids": set(), **options}
    return Engine(AdapterModel(tiny_llama()).eval(), **options)


def _sequence(events, adapter="__base__", max_tokens=10, prompt=(5, 6, 7)):
    seq = Sequence(list(prompt), adapter, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                   lambda token, reason, error: events.append((token, reason, error)))
    return seq


def test_every_turn_decodes_running_rows_while_new_ones_are_prefilled():
    engine = _engine()
    events_a: list = []
    a = _sequence(events_a, max_tokens=10)
    engine.submit([a])
    engine._turn()  # prefill a, then one decode pass
    assert len(a.generated) == 2
    for turn in range(3):  # a new arrival every turn: a still advances every turn
        engine.submit([_sequence([], max_tokens=2)])
        engine._turn()
        assert len(a.generated) == 3 + turn
    assert engine.stats.running <= 3


def test_finished_rows_leave_at_once_and_free_their_row():
    engine = _engine()
    events: list = []
    short = _sequence(events, max_tokens=2)
    long = _sequence([], max_tokens=9)
    engine.submit([short, long])
    engine._turn()
    assert events[-1][1] == "length" and short.done
    assert engine._running == [long] and long.row == 0  # moved down into the freed row


def test_a_failed_pass_fails_its_sequences_and_the_engine_goes_on():
    engine = _engine()
    engine.start()
    try:
        bad: list = []
        engine.submit([_sequence(bad, adapter="not-loaded")])
        good: list = []
        import time

        deadline = time.monotonic() + 60  # a bound for a loaded machine; a pass takes milliseconds
        while not bad and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bad[-1][1] == "error" and "not-loaded" in bad[-1][2]
        engine.submit([_sequence(good, max_tokens=3)])
        while (not good or good[-1][1] is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert good[-1][1] == "length" and len(good) == 3
    finally:
        engine.stop()


def test_a_full_queue_refuses_a_whole_request():
    engine = _engine(max_queue=3)
    engine.submit([_sequence([]) for _ in range(2)])
    with pytest.raises(QueueFullError):
        engine.submit([_sequence([]) for _ in range(2)])  # n=2 does not fit: none of it is queued
    assert engine.stats.waiting == 2


def test_a_sliding_window_model_is_refused_past_its_window():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    model = AdapterModel(MistralForCausalLM(config).eval())
    with pytest.raises(ValueError, match="sliding window of 8"):
        Engine(model, max_batch=1, max_model_len=32, max_queue=1, eos_token_ids=set())
    Engine(model, max_batch=1, max_model_len=8, max_queue=1, eos_token_ids=set())  # within the window: served
