"""Adapters while serving: store refs loaded on first request (once), LRU eviction under
--max-loras, hot load / unload / replace through the admin endpoints, failed loads."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from serve_helpers import API_KEY, serving

from adapterkit.store import AdapterStore

ADMIN = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def store(adapter_dirs, tmp_path_factory):
    """s00..s19 -> a00..a19; t@1 -> a00 and t@2 -> a01, tagged prod."""
    store = AdapterStore(tmp_path_factory.mktemp("serve-store"))
    for i in range(20):
        store.put(adapter_dirs[f"a{i:02d}"], name=f"s{i:02d}")
    store.put(adapter_dirs["a00"], name="t")
    store.put(adapter_dirs["a01"], name="t")
    store.tag("t@2", "prod")
    return store


async def _complete(client, model, prompt, max_tokens=6):
    reply = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return reply.choices[0].text


def test_store_refs_rotate_through_max_loras_4_with_lru_eviction(base_dir, store, reference):
    prompt = "w3 w9 w27"
    expected = {f"a{i:02d}": reference.complete(f"a{i:02d}", reference.prompt_ids(prompt), 6)[0] for i in range(20)}
    seen_resident = []

    async def rotate(server):
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
            async def watch():
                while True:
                    seen_resident.append(len(server.state.adapters.resident))
                    await asyncio.sleep(0.002)
            watcher = asyncio.create_task(watch())
            results = []
            for round_ in range(3):
                for start in (0, 10):  # 10 distinct adapters requested at once, over --max-loras 4
                    names = [f"s{i:02d}" for i in range(start, start + 10)]
                    refs = [n if round_ != 1 else f"{n}@1" for n in names]
                    texts = await asyncio.gather(*(_complete(client, r, prompt) for r in refs))
                    results += list(zip(names, texts))
            watcher.cancel()
            return results

    with serving(base_dir, store=store, max_loras=4, max_batch=8) as server:
        results = asyncio.run(rotate(server))
        stats = server.state.adapters.stats
        assert len(server.state.adapters.resident) <= 4
        assert len(server.state.model.peft_config) <= 4  # evicted adapters really left the model
    assert max(seen_resident) <= 4
    for name, text in results:
        assert text == expected["a" + name[1:]], name
    assert stats.evictions >= 3 * 20 - 4 and stats.load_failures == 0


def test_concurrent_first_requests_load_a_store_ref_once_and_tags_resolve(base_dir, store, reference):
    prompt = "w5 w6"

    async def burst(server):
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
            same = await asyncio.gather(*(_complete(client, "s07", prompt) for _ in range(8)))
            loads_after_burst = server.state.adapters.stats.loads
            tagged = await _complete(client, "t@prod", prompt)
            latest = await _complete(client, "t", prompt)  # latest is version 2: the same as prod
            first = await _complete(client, "t@1", prompt)
            return same, loads_after_burst, tagged, latest, first, server.state.adapters.stats.loads

    with serving(base_dir, store=store, max_loras=8) as server:
        same, loads_after_burst, tagged, latest, first, loads = asyncio.run(burst(server))
        listed = {m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert loads_after_burst == 1  # eight concurrent first requests, one load
    assert set(same) == {reference.complete("a07", reference.prompt_ids(prompt), 6)[0]}
    assert tagged == latest == reference.complete("a01", reference.prompt_ids(prompt), 6)[0]
    assert first == reference.complete("a00", reference.prompt_ids(prompt), 6)[0]
    assert loads == 3  # s07@1, t@2 (prod and latest are one version), t@1
    assert {"s07@1", "t@2", "t@1", "tiny"} <= listed


def test_a_failed_load_is_a_4xx_for_that_request_only(base_dir, adapter_dirs, store, tmp_path):
    broken = tmp_path / "wrong-shapes"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter_dirs["a00"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 64)  # not a safetensors file

    async def mixed(server):
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
            async def bad_load():
                async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=60) as http:
                    return await http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(broken)})
            return await asyncio.gather(bad_load(), _complete(client, "good", "w1"), _complete(client, "s03", "w1"),
                                        return_exceptions=True)

    with serving(base_dir, {"good": adapter_dirs["a02"]}, store=store, api_key=API_KEY) as server:
        bad, good, from_store = asyncio.run(mixed(server))
        assert bad.status_code == 400 and "wrong-shapes" in bad.json()["error"]["message"]
        assert isinstance(good, str) and isinstance(from_store, str)
        assert "bad" not in {m["id"] for m in httpx.get(server.url + "/v1/models", headers=ADMIN).json()["data"]}
        missing = httpx.post(server.url + "/v1/load_lora_adapter", headers=ADMIN,
                             json={"lora_name": "gone", "lora_path": str(tmp_path / "nothing")})
        assert missing.status_code == 404
        assert server.state.adapters.stats.load_failures == 2


def test_hot_load_unload_and_replace_under_load(base_dir, adapter_dirs, reference):
    prompt = "w12 w13 w14"
    alone = {n: reference.complete(n, reference.prompt_ids(prompt), 20)[0] for n in ("a00", "a01", "a02")}
    assert len(set(alone.values())) == 3

    async def scenario(server):
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as client, \
                httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            async def load(name, folder, inplace=False):
                response = await admin.post("/v1/load_lora_adapter", json={
                    "lora_name": name, "lora_path": str(adapter_dirs[folder]), "load_inplace": inplace})
                assert response.status_code == 200, response.text
            # Load under load: requests on x run while y arrives.
            traffic = [asyncio.create_task(_complete(client, "x", prompt, 20)) for _ in range(6)]
            await load("y", "a01")
            assert await _complete(client, "y", prompt, 20) == alone["a01"]
            assert set(await asyncio.gather(*traffic)) == {alone["a00"]}
            # Replace x back and forth while requests on x are in flight: each reply is all old or all new.
            replies = []
            for flip in range(6):
                batch = [asyncio.create_task(_complete(client, "x", prompt, 20)) for _ in range(4)]
                await asyncio.sleep(0)
                await load("x", "a02" if flip % 2 == 0 else "a00", inplace=True)
                replies += await asyncio.gather(*batch)
            assert set(replies) <= {alone["a00"], alone["a02"]}
            assert await _complete(client, "x", prompt, 20) == alone["a00"]  # the last load was a00
            # Same name without load_inplace is refused, as vLLM does.
            again = await admin.post("/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": str(adapter_dirs["a03"])})
            assert again.status_code == 400
            # Unload y while a request on it runs: the request finishes on y, later ones get 404.
            # Its first streamed token proves it is running (holding y) before the unload is sent, on
            # however loaded a machine.
            running = await client.completions.create(model="y", prompt=prompt, max_tokens=20, temperature=0,
                                                      stream=True)
            first = await running.__anext__()
            assert (await admin.post("/v1/unload_lora_adapter", json={"lora_name": "y"})).status_code == 200
            rest = [chunk.choices[0].text async for chunk in running if chunk.choices]
            assert first.choices[0].text + "".join(rest) == alone["a01"]
            with pytest.raises(openai.NotFoundError):
                await _complete(client, "y", prompt)
            assert (await admin.post("/v1/unload_lora_adapter", json={"lora_name": "y"})).status_code == 404

    with serving(base_dir, {"x": adapter_dirs["a00"]}, api_key=API_KEY, max_batch=8) as server:
        asyncio.run(scenario(server))
        # Only x's current weights remain: every replaced or unloaded copy was deleted from the model
        # (deletions queued behind the last lease run on the engine thread: wait for them, bounded).
        deadline = time.monotonic() + 30
        while len(server.state.model.peft_config) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(server.state.model.peft_config) == 1
        assert json.dumps(server.state.adapters.listing()).count('"id"') == 1
