"""The OpenAI endpoints through the official openai client, against a real uvicorn server:
every reply equals the same request run alone in-process with plain generate."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from serve_helpers import serving

PROMPTS = ["w1 w2 w3", "w10 w11", "w40 w41 w42 w43 w44", "w7"]


@pytest.fixture(scope="module")
def server(base_dir, adapter_dirs):
    names = ["a00", "a01", "a02", "a03"]
    with serving(base_dir, {n: adapter_dirs[n] for n in names}, max_batch=8) as server:
        yield server


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


@pytest.mark.parametrize("model", ["tiny", "a00", "a01"])
def test_completion_equals_generate_alone(client, reference, model):
    adapter = None if model == "tiny" else model
    for prompt in PROMPTS:
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
        text, finish, count = reference.complete(adapter, reference.prompt_ids(prompt), 8)
        assert reply.choices[0].text == text
        assert reply.choices[0].finish_reason == finish
        assert reply.usage.prompt_tokens == len(reference.prompt_ids(prompt))
        assert reply.usage.completion_tokens == count
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + count
        assert reply.model == model and reply.object == "text_completion"


def test_streamed_completion_equals_generate_alone(client, reference):
    for model, adapter in (("a02", "a02"), ("tiny", None)):
        stream = client.completions.create(model=model, prompt=PROMPTS[2], max_tokens=10, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        chunks = list(stream)
        text, finish, count = reference.complete(adapter, reference.prompt_ids(PROMPTS[2]), 10)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count
        assert all(c.usage is None for c in chunks[:-1])


def test_chat_both_ways_equals_generate_alone(client, reference):
    messages = [{"role": "user", "content": "w3 w4 w5"}]
    text, finish, count = reference.complete("a03", reference.chat_ids(messages), 9)
    reply = client.chat.completions.create(model="a03", messages=messages, max_tokens=9, temperature=0)
    assert reply.choices[0].message.content == text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == finish and reply.usage.completion_tokens == count
    assert reply.object == "chat.completion"
    chunks = list(client.chat.completions.create(model="a03", messages=messages, max_tokens=9, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_sse_wire_format(server):
    body = {"model": "a00", "prompt": "w1 w2", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_seeded_sampling_is_reproducible_and_n_gives_distinct_choices(client):
    kwargs = dict(model="a01", prompt="w5 w6", max_tokens=12, temperature=1.5, top_p=0.95, seed=7, n=3)
    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # three draws from a hot distribution differ
    other = client.completions.create(**{**kwargs, "seed": 8})
    assert [c.text for c in other.choices] != [c.text for c in first.choices]


def test_list_of_prompts_numbers_choices_per_prompt(client, reference):
    reply = client.completions.create(model="a00", prompt=PROMPTS[:2], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(PROMPTS[:2]):
        text, _, _ = reference.complete("a00", reference.prompt_ids(prompt), 5)
        assert reply.choices[2 * i].text == reply.choices[2 * i + 1].text == text


def test_stop_strings_cut_the_text_and_end_the_sequence(client, reference):
    text, _, _ = reference.complete("a02", reference.prompt_ids("w1 w2 w3"), 12)
    words = text.split()
    assert len(words) >= 4, text
    stop = " ".join(words[2:4])  # a stop string that spans two tokens
    cut = text[: text.index(stop)]
    reply = client.completions.create(model="a02", prompt="w1 w2 w3", max_tokens=12, temperature=0, stop=[stop, "zz"])
    assert reply.choices[0].text == cut and reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="a02", prompt="w1 w2 w3", max_tokens=12, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_models_lists_base_and_adapters_in_vllm_shape(client, server, adapter_dirs):
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny", "a00", "a01", "a02", "a03"}
    assert listed["a00"].parent == "tiny" and listed["a00"].root == str(adapter_dirs["a00"])
    assert listed["tiny"].parent is None
    raw = httpx.get(server.url + "/v1/models").json()
    assert raw["object"] == "list" and all({"id", "root", "parent"} <= set(m) for m in raw["data"])


def test_health_and_metrics(server):
    # A sequence an earlier test's stop string ended leaves its row at the engine's next pass, which
    # can come after the reply on a loaded machine: wait (bounded) for the server to be idle.
    deadline = time.monotonic() + 60
    while (health := httpx.get(server.url + "/health", timeout=30).json())["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert health["status"] == "ok" and health["running"] == 0 and health["resident_adapters"] == 4
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("adapterkit_queue_depth", "adapterkit_running_sequences", "adapterkit_resident_adapters",
                 "adapterkit_tokens_per_second", "adapterkit_adapter_loads_total", "adapterkit_adapter_evictions_total",
                 "adapterkit_request_latency_seconds_bucket", "adapterkit_time_to_first_token_seconds_bucket"):
        assert name in metrics, name


def test_a_bfloat16_server_serves_mixed_batches(base_dir, adapter_dirs):
    import asyncio

    import torch
    from serve_helpers import ServerThread

    from adapterkit.hf import load_base
    from adapterkit.serve import ServeConfig, build_app

    model, tokenizer = load_base(base_dir, dtype=torch.bfloat16)
    app = build_app(model, tokenizer, ServeConfig(base_name="tiny", adapters={"a": adapter_dirs["a00"],
                                                                              "b": adapter_dirs["a01"]},
                                                  max_model_len=32))
    assert app.state.server.engine.cache.keys[0].dtype == torch.bfloat16

    async def three(url):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
            return await asyncio.gather(*(client.completions.create(model=m, prompt="w1 w2", max_tokens=5, temperature=0)
                                          for m in ("a", "b", "tiny")))

    with ServerThread(app) as server:
        replies = asyncio.run(three(server.url))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
