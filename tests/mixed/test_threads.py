"""Several threads run their own batches on one model at once: each gets what it gets alone.

A call's routing (which adapter each row uses) is private to its thread; before,
it was one shared object set per call, and concurrent calls ran each other's rows.
"""

from __future__ import annotations

import threading

import torch

from adapterkit import LoraConfig, get_peft_model
from helpers import input_ids, max_diff, randomize_adapter, tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]
BATCHES = [  # (seed, adapter names per row): mixed, mixed, uniform (one adapter), all base
    (11, ["a", "b", "__base__", "c"]),
    (12, ["c", "__base__", "d", "a"]),
    (13, ["b", "b", "b"]),
    (14, ["__base__", "__base__"]),
]
ROUNDS = 25


def _model():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=TARGETS), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=8, target_modules=TARGETS))
    model.add_adapter("c", LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("d", LoraConfig(r=4, target_modules=["v_proj", "down_proj"]))
    randomize_adapter(model, std=0.3)
    return model.eval()


@torch.no_grad()
def test_threads_running_different_batches_each_get_their_own_rows():
    model = _model()
    inputs = [input_ids(seed=seed, batch=len(names)) for seed, names in BATCHES]
    alone = [model(input_ids=ids, adapter_names=names).logits for ids, (_, names) in zip(inputs, BATCHES)]
    # The batches really differ from each other and from the base, or a mix-up could go unseen.
    assert max_diff(alone[0], model.get_base_model()(input_ids=inputs[0]).logits) > 1e-2

    start = threading.Barrier(len(BATCHES) + 1)
    failures: list[str] = []

    def run(which: int) -> None:
        ids, names = inputs[which], BATCHES[which][1]
        start.wait()
        for round_ in range(ROUNDS):
            with torch.no_grad():
                got = model(input_ids=ids, adapter_names=names).logits
            if max_diff(got, alone[which]) > 1e-5:
                failures.append(f"batch {which} ({names}), round {round_}: off by {max_diff(got, alone[which]):.3g}")

    def switch() -> None:  # the model-wide choice changes meanwhile; calls that name their rows ignore it
        start.wait()
        for round_ in range(ROUNDS * 4):
            model.set_adapter("b" if round_ % 2 else "a")
            if round_ % 7 == 0:
                model.disable_adapters()
            elif round_ % 7 == 3:
                model.enable_adapters()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(BATCHES))]
    threads.append(threading.Thread(target=switch))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:5]
    assert model.routing.row_ids is None  # nothing of any call is left behind


@torch.no_grad()
def test_generate_on_two_threads_matches_generate_alone():
    model = _model()
    jobs = [(input_ids(seed=21, batch=3), ["a", "__base__", "d"]), (input_ids(seed=22, batch=3), ["c", "b", "c"])]
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = [model.generate(input_ids=ids, adapter_names=names, **settings) for ids, names in jobs]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def run(which: int) -> None:
        ids, names = jobs[which]
        for _ in range(6):
            with torch.no_grad():
                results[which].append(model.generate(input_ids=ids, adapter_names=names, **settings))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for which, outputs in results.items():
        assert len(outputs) == 6 and all(torch.equal(out, alone[which]) for out in outputs), which
