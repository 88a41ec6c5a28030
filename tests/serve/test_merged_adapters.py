"""`merged_adapters` (LoRAX's per-request weighted combination) on a real server, through the
official openai client's `extra_body`: every reply equals the same combination made offline with
add_weighted_adapter on a fresh model, alone, even inside a busy mixed batch; one definition is
built once (cache hits in /metrics), takes an adapter slot, and is freed on eviction or when a
source is unloaded or replaced; a generated family of bad bodies each gets a typed 4xx and changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import torch
from serve_helpers import API_KEY, Reference, randomize_adapter, serving, tiny_llama

from adapterkit import LoraConfig, get_peft_model
from adapterkit.hf import load_base
from adapterkit.store import AdapterStore

NAMED = ("a00", "a02", "a06")  # named at start (a00, a06: rank 8; a02: rank 4)
STORE_SOURCE = ("s04", "a04")  # a store ref (rank 4), loaded on first use
PROMPT = "w1 w2 w3"
MAX_TOKENS = 8

# (merged_adapters, the same combination as add_weighted_adapter's arguments, offline)
COMBINATIONS = [
    ({"ids": ["a02", "s04"], "weights": [0.7, -0.4]},
     (["a02", "a04"], [0.7, -0.4], {"combination_type": "linear"})),
    ({"ids": ["a00", "a02"], "weights": [1.0, 0.5], "merge_strategy": "cat"},
     (["a00", "a02"], [1.0, 0.5], {"combination_type": "cat"})),
    ({"ids": ["a00", "a06"], "weights": [1.2, 0.8], "merge_strategy": "ties", "density": 0.5,
      "majority_sign_method": "frequency"},
     (["a00", "a06"], [1.2, 0.8], {"combination_type": "ties", "density": 0.5, "majority_sign_method": "frequency"})),
    ({"ids": ["a02", "s04"], "weights": [1.0, 1.0], "merge_strategy": "dare_ties", "density": 0.6, "seed": 5},
     (["a02", "a04"], [1.0, 1.0], {"combination_type": "dare_ties", "density": 0.6, "seed": 5})),
    ({"ids": ["a06", "a00"], "weights": [0.9, 0.6], "merge_strategy": "dare_linear", "density": 0.7},
     (["a06", "a00"], [0.9, 0.6], {"combination_type": "dare_linear", "density": 0.7, "seed": 0})),
    ({"ids": ["a00", "a06"], "weights": [1.0, -1.0], "merge_strategy": "magnitude_prune", "density": 0.3},
     (["a00", "a06"], [1.0, -1.0], {"combination_type": "magnitude_prune", "density": 0.3})),
]


@pytest.fixture(scope="module")
def store(base_dir, adapter_dirs, tmp_path_factory):
    store = AdapterStore(tmp_path_factory.mktemp("merged-store"))
    store.put(adapter_dirs[STORE_SOURCE[1]], name=STORE_SOURCE[0])
    # Same shapes and targets as a00, trained on another base (the seed-1 tiny Llama): only its fingerprint differs.
    other = get_peft_model(tiny_llama(seed=1), LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                           "down_proj"]))
    randomize_adapter(other, seed=7, std=0.6)
    store.put(other.save_pretrained(tmp_path_factory.mktemp("other-base")), name="other")
    # On this base: a DoRA adapter, and one whose rank is 8 at q_proj only (its config's largest rank
    # matches a00's, so only the loaded modules show that v_proj and down_proj have rank 4).
    base = load_base(base_dir)[0]
    targets = ["q_proj", "v_proj", "down_proj"]
    dora = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=targets, use_dora=True),
                          adapter_name="dora")
    dora.add_adapter("patterned", LoraConfig(r=4, lora_alpha=8, target_modules=targets, rank_pattern={"q_proj": 8}))
    for name in ("dora", "patterned"):
        dora.set_adapter(name)
        randomize_adapter(dora, seed=8, std=0.6)
        folder = dora.save_pretrained(tmp_path_factory.mktemp(name), selected_adapters=[name])
        store.put(folder / name, name=name)
    return store


@pytest.fixture(scope="module")
def server(base_dir, adapter_dirs, store):
    with serving(base_dir, {name: adapter_dirs[name] for name in NAMED}, store=store, max_loras=6, max_batch=8,
                 max_model_len=64, api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def offline(base_dir, adapter_dirs):
    """A fresh model with the sources loaded, and each combination added by add_weighted_adapter."""
    reference = Reference(base_dir, {name: adapter_dirs[name] for name in ("a00", "a02", "a04", "a06")})
    for i, (_, (adapters, weights, options)) in enumerate(COMBINATIONS):
        options = dict(options)
        torch.manual_seed(options.pop("seed", 0))  # DARE draws its masks from torch's global generator
        reference.model.add_weighted_adapter(adapters, weights, f"combination{i}", **options)
    reference.model.eval()
    return reference


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_combinations_in_a_busy_mixed_batch_equal_add_weighted_adapter_offline(server, offline):
    """All combinations and plain requests at once, twice each, through both endpoints."""
    messages = [{"role": "user", "content": PROMPT}]

    async def run():
        async with _client(server) as client:
            def complete(model, merged=None):
                return client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                                 extra_body={"merged_adapters": merged} if merged else None)

            def chat(merged):
                return client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX_TOKENS,
                                                      temperature=0, extra_body={"merged_adapters": merged})
            merged = [merged for merged, _ in COMBINATIONS]
            calls = ([complete("tiny", m) for m in merged] + [chat(m) for m in merged]
                     + [complete(m) for m in ("a00", "a02", "tiny", "s04")] + [complete("tiny", m) for m in merged])
            return await asyncio.gather(*calls)

    replies = asyncio.run(run())
    n = len(COMBINATIONS)
    prompt_ids, chat_ids = offline.prompt_ids(PROMPT), offline.chat_ids(messages)
    expected = [offline.complete(f"combination{i}", prompt_ids, MAX_TOKENS) for i in range(n)]
    for i in range(n):
        for reply in (replies[i], replies[2 * n + 4 + i]):
            assert (reply.choices[0].text, reply.choices[0].finish_reason) == expected[i][:2], COMBINATIONS[i][0]
        text, finish, _ = offline.complete(f"combination{i}", chat_ids, MAX_TOKENS)
        assert (replies[n + i].choices[0].message.content, replies[n + i].choices[0].finish_reason) == (text, finish)
    for reply, adapter in zip(replies[2 * n: 2 * n + 4], ("a00", "a02", None, "a04")):
        assert reply.choices[0].text == offline.complete(adapter, prompt_ids, MAX_TOKENS)[0]
    # The combinations do something: they differ from the base and from their sources.
    plain = {offline.complete(a, prompt_ids, MAX_TOKENS)[0] for a in (None, "a00", "a02", "a04", "a06")}
    assert len({text for text, _, _ in expected} - plain) >= n - 1


def test_one_definition_is_built_once_and_freed_on_eviction_and_unload(server, offline, adapter_dirs):
    state = server.state
    merged = {"ids": ["a00", "a02"], "weights": [2.0, 1.0], "merge_strategy": "cat"}
    # The same definition written differently: ints for floats, options cat does not read.
    same = {"ids": ["a00", "a02"], "weights": [2, 1], "merge_strategy": "cat", "density": 0.4, "seed": 9,
            "majority_sign_method": "frequency"}

    def complete(body):
        with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
            return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                             extra_body={"merged_adapters": body}).choices[0].text

    hits, misses = _metric(server, "adapterkit_combination_cache_hits_total"), \
        _metric(server, "adapterkit_combination_cache_misses_total")
    first = complete(merged)
    assert _metric(server, "adapterkit_combination_cache_misses_total") == misses + 1
    combination = _resident_with(state, '"weights":[2.0,1.0]')
    assert complete(same) == complete(merged) == first
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
        stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                           stream=True, extra_body={"merged_adapters": same})
        assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == first
    assert _metric(server, "adapterkit_combination_cache_hits_total") == hits + 3
    assert _metric(server, "adapterkit_combination_cache_misses_total") == misses + 1
    assert combination.internal in state.model.peft_config and len(state.adapters.resident) <= 6

    # Another seed is another DARE combination.
    complete({"ids": ["a02", "s04"], "merge_strategy": "dare_linear", "density": 0.5, "seed": 1})
    complete({"ids": ["a02", "s04"], "merge_strategy": "dare_linear", "density": 0.5, "seed": 2})
    assert _metric(server, "adapterkit_combination_cache_misses_total") == misses + 3
    # Fill the 6 slots with new combinations: the LRU evicts the first one and frees it from the model.
    for w in (0.1, 0.2, 0.4, 0.5, 0.6, 0.7):
        complete({"ids": ["a06", "a00"], "weights": [w, 1.0]})
    assert combination.deleted and combination.internal not in state.model.peft_config
    assert len(state.adapters.resident) <= 6
    assert complete(merged) == first  # built again, from a00 and a02 reloaded as needed
    combination = _resident_with(state, '"weights":[2.0,1.0]')
    # Unloading a source frees the combinations built from it.
    response = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "a02"},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert combination.deleted and combination.internal not in state.model.peft_config
    assert not any("a02" in r.built_from for r in state.adapters.resident.values())
    response = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": PROMPT,
                                                                 "merged_adapters": merged},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["param"] == "merged_adapters.ids.1"
    response = httpx.post(server.url + "/v1/load_lora_adapter",
                          json={"lora_name": "a02", "lora_path": str(adapter_dirs["a02"])},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert complete(merged) == first
    # Replacing a source in place (other weights, same shapes) gives a new definition: rebuilt, not reused.
    combination = _resident_with(state, '"weights":[2.0,1.0]')
    misses = _metric(server, "adapterkit_combination_cache_misses_total")
    response = httpx.post(server.url + "/v1/load_lora_adapter",
                          json={"lora_name": "a02", "lora_path": str(adapter_dirs["a04"]), "load_inplace": True},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert combination.deleted and combination.internal not in state.model.peft_config
    replaced = complete(merged)
    assert _metric(server, "adapterkit_combination_cache_misses_total") == misses + 1
    offline.model.add_weighted_adapter(["a00", "a04"], [2.0, 1.0], "cat-a00-a04", combination_type="cat")
    assert replaced == offline.complete("cat-a00-a04", offline.prompt_ids(PROMPT), MAX_TOKENS)[0] != first
    response = httpx.post(server.url + "/v1/load_lora_adapter",
                          json={"lora_name": "a02", "lora_path": str(adapter_dirs["a02"]), "load_inplace": True},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text


def _resident_with(state, definition_part: str):
    (resident,) = [r for r in state.adapters.resident.values() if definition_part in (r.source.combination or "")]
    return resident


VALID = {"ids": ["a00", "a06"], "weights": [1.0, 0.5], "merge_strategy": "ties", "density": 0.5}
# field -> (bad values, expected status): each bad value replaces the field in VALID.
BAD_VALUES = {
    "ids": ([[], "a00", [1, 2], ["", "a06"], ["a00", "a00"], ["tiny", "a06"], [f"x{i}" for i in range(17)],
             ["a00", "a01", "a02", "a03", "a04", "a05"], None], 400),
    "weights": ([[1.0], [1.0, 2.0, 3.0], [True, 1.0], ["1", 1.0], [math.nan, 1.0], [math.inf, 1.0], "1", {}], 400),
    "merge_strategy": (["svd", "ties_svd", "bogus", "", 3, ["ties"]], 400),
    "density": ([0, -0.1, 1.5, "0.5", True, math.nan, None], 400),
    "majority_sign_method": (["most", 1, ""], 400),
    "seed": ([-1, 1.5, "3", 2**64, True], 400),
}


def _bad_bodies():
    for field, (values, status) in BAD_VALUES.items():
        base = {k: v for k, v in VALID.items() if k != "weights"} if field == "ids" else VALID  # weights: 1 each
        for value in values:
            yield f"{field}={value!r}", {**base, field: value}, status, f"merged_adapters.{field}"
    yield "an unknown field", {**VALID, "strategy": "ties"}, 400, "merged_adapters"
    for value in ("a00", ["a00"], 5, True):
        yield f"merged_adapters={value!r}", value, 400, "merged_adapters"
    yield "an unknown id", {**VALID, "ids": ["a00", "nope"]}, 404, "merged_adapters.ids.1"
    yield "an unknown store version", {**VALID, "ids": ["s04@9", "a06"]}, 404, "merged_adapters.ids.0"
    yield "one store ref twice", {"ids": ["s04", "s04@1"]}, 400, "merged_adapters.ids"
    yield "an adapter of another base", {"ids": ["a00", "other"], "merge_strategy": "cat"}, 400, "merged_adapters"
    yield "a DoRA adapter", {"ids": ["a00", "dora"], "merge_strategy": "cat"}, 400, "merged_adapters"
    for strategy in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):  # only cat combines ranks 8, 4
        for ids in (["a00", "s04"], ["s04", "a06"], ["a02", "a06"]):
            yield f"{strategy} over {ids}", {"ids": ids, "merge_strategy": strategy, "density": 0.5}, 400, \
                "merged_adapters"


def test_bad_merged_adapters_are_typed_4xx_and_change_nothing(server):
    state = server.state
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}",
                                                                 "Content-Type": "application/json"}) as http:
        def post(body, path="/v1/completions"):
            return http.post(path, content=json.dumps(body))  # json.dumps writes NaN and Infinity, as some clients do

        # s04 not resident: a refused combination must not load it (nor evict anything to make room).
        response = post({"lora_name": "s04@1"}, "/v1/unload_lora_adapter")
        assert response.status_code in (200, 404), response.text
        probe = {"model": "tiny", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
                 "merged_adapters": {"ids": ["a06", "a00"], "weights": [0.9, 0.6]}}
        before = post(probe).json()["choices"][0]["text"]
        plain_before = post({**probe, "model": "a06", "merged_adapters": None}).json()["choices"][0]["text"]
        resident_before = {k: r.internal for k, r in state.adapters.resident.items()}
        loaded_before = set(state.model.peft_config)
        loads_before = (state.adapters.stats.loads, state.adapters.stats.load_failures)

        cases = list(_bad_bodies()) + [("model names an adapter", VALID, 400, "model")]
        assert len(cases) >= 45
        chat = {"messages": [{"role": "user", "content": PROMPT}]}
        for i, (case, merged, status, param) in enumerate(cases):
            body = {"model": "a00" if param == "model" else "tiny", "max_tokens": 4, "merged_adapters": merged}
            # Both endpoints share the field's validation: the chat one is checked on every third case.
            endpoints = [("/v1/completions", {"prompt": PROMPT})] + [("/v1/chat/completions", chat)] * (i % 3 == 0)
            for path, prompt in endpoints:
                response = post({**body, **prompt}, path)
                assert response.status_code == status, (case, path, response.text)
                error = response.json()["error"]
                assert error["type"] == "invalid_request_error" and error["message"], case
                assert (error["param"] or "").startswith(param), (case, error)
                assert "merged_adapters" in error["message"] or param == "model", (case, error)
        assert {k: r.internal for k, r in state.adapters.resident.items()} == resident_before
        assert set(state.model.peft_config) == loaded_before
        assert (state.adapters.stats.loads, state.adapters.stats.load_failures) == loads_before  # nothing loaded
        assert post(probe).json()["choices"][0]["text"] == before
        assert post({**probe, "model": "a06", "merged_adapters": None}).json()["choices"][0]["text"] == plain_before

        # Ranks that differ module by module show only once loaded: the source loaded for it is unloaded again.
        loads = state.adapters.stats.loads
        response = post({"model": "tiny", "prompt": PROMPT, "merged_adapters": {"ids": ["a00", "patterned"]}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "merged_adapters", response.text
        assert "rank 8 at every module" in response.json()["error"]["message"]
        assert state.adapters.stats.loads == loads + 1 and "patterned@1" not in state.adapters.resident
        assert set(state.model.peft_config) <= loaded_before
        assert post(probe).json()["choices"][0]["text"] == before


README = Path(__file__).parents[2] / "README.md"


def readme_merged_adapters() -> tuple[list[str], str]:
    """The bash lines and the python block of the README's merged_adapters subsection."""
    text = README.read_text()
    section = text[text.index("<!-- serving:merged_adapters"):]
    section = section[: section.index("\n## ")]
    bash = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines() if line]
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return bash, python


def test_readme_merged_adapters_commands_run_and_equal_the_offline_combination(server, offline):
    """The README's commands as written, with the demo's names mapped to the test server's."""
    bash, python = readme_merged_adapters()

    def local(command: str) -> str:
        for readme, here in (("8000", str(server.port)), ("sk-local", API_KEY), ('"smollm2"', '"tiny"'),
                             ('"reverse"', '"a00"'), ('"shout"', '"a06"')):
            command = command.replace(readme, here)
        return command

    messages = [{"role": "user", "content": "apple banana cherry"}]
    offline.model.add_weighted_adapter(["a00", "a06"], [0.7, 0.3], "readme-ties", combination_type="ties", density=0.5)
    torch.manual_seed(1)
    offline.model.add_weighted_adapter(["a00", "a06"], [0.7, 0.3], "readme-dare", combination_type="dare_ties",
                                       density=0.5)
    chat_ids = offline.chat_ids(messages)
    assert [line.split()[0] for line in bash] == ["curl", "curl"]
    chat = subprocess.run(["bash", "-c", local(bash[0])], capture_output=True, text=True, timeout=60)
    assert json.loads(chat.stdout)["choices"][0]["message"]["content"] == offline.complete("readme-ties", chat_ids,
                                                                                           16)[0]
    metrics = subprocess.run(["bash", "-c", local(bash[1])], capture_output=True, text=True, timeout=60)
    assert "adapterkit_combination_cache_hits_total" in metrics.stdout, metrics
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(local(python), "README.md", "exec"), {})
    assert printed.getvalue() == offline.complete("readme-dare", chat_ids, 16)[0] + "\n"
