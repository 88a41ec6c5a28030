"""The property to hammer: a greedy request gives the same tokens alone or inside a busy batch
of other adapters. 64 concurrent requests over 16 adapters plus the base, each compared with
the same request run alone in-process."""

from __future__ import annotations

import asyncio
import random

import openai
from serve_helpers import serving


def test_64_concurrent_requests_over_16_adapters_equal_each_alone(base_dir, adapter_dirs, reference):
    names = [f"a{i:02d}" for i in range(16)]
    rng = random.Random(0)
    requests = []
    for i in range(64):
        model = "tiny" if i % 17 == 0 else names[i % 16]
        words = " ".join(f"w{rng.randrange(5, 64)}" for _ in range(rng.randrange(1, 9)))
        chat = i % 3 == 0
        stream = i % 2 == 0
        requests.append((model, words, chat, stream, rng.randrange(4, 14)))

    async def one(client, model, words, chat, stream, max_tokens):
        if chat:
            messages = [{"role": "user", "content": words}]
            kwargs = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
            if stream:
                chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
                return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
            reply = await client.chat.completions.create(**kwargs)
            return reply.choices[0].message.content, reply.choices[0].finish_reason
        kwargs = dict(model=model, prompt=words, max_tokens=max_tokens, temperature=0)
        if stream:
            chunks = [c async for c in await client.completions.create(stream=True, **kwargs)]
            return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        reply = await client.completions.create(**kwargs)
        return reply.choices[0].text, reply.choices[0].finish_reason

    async def all_at_once(url):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
            return await asyncio.gather(*(one(client, *r) for r in requests))

    with serving(base_dir, {n: adapter_dirs[n] for n in names}, max_batch=24, max_loras=16) as server:
        replies = asyncio.run(all_at_once(server.url))
        stats = server.state.engine.stats
    assert stats.prefills < 64  # requests really shared passes
    for (model, words, chat, _, max_tokens), (text, finish) in zip(requests, replies):
        adapter = None if model == "tiny" else model
        prompt = reference.chat_ids([{"role": "user", "content": words}]) if chat else reference.prompt_ids(words)
        expected, expected_finish, _ = reference.complete(adapter, prompt, max_tokens)
        assert (text, finish) == (expected, expected_finish), (model, words, chat)
