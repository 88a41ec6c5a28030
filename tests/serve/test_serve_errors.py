"""Every error status, in OpenAI's JSON shape, as the openai client classifies it; and a client
that disconnects cancels its sequence and frees its row."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time

import httpx
import openai
import pytest
from serve_helpers import API_KEY, serving

GOOD = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 4}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(base_dir, adapter_dirs):
    with serving(base_dir, {"a": adapter_dirs["a00"]}, api_key=API_KEY, max_batch=4, max_model_len=24,
                 max_body_bytes=4096) as server:
        yield server


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _bad_bodies():
    """Generated families of bad parameters: each field with out-of-range, wrong-type and missing values."""
    values = {
        "temperature": [-0.1, 2.5, "hot", [1]],
        "top_p": [0, -1, 1.01, "all"],
        "n": [0, -3, 17, 1.5, "two"],
        "max_tokens": [0, -1, "many", 2.5],
        "seed": ["abc", 1.5],
        "stop": [7, [1, 2], [""] , ["x"] * 17, ""],
        "model": ["", 3, None],
        "prompt": [None, [], "", 5, [[-1]], [[10_000]]],
        "stream": ["sometimes", [True]],
        "logprobs": [3], "echo": [True], "best_of": [2], "logit_bias": [{"5": 1}], "presence_penalty": [0.5],
    }
    for field, bad in values.items():
        for value in bad:
            yield field, {**GOOD, field: value}
    for field in ("model", "prompt"):
        yield field, {k: v for k, v in GOOD.items() if k != field}


@pytest.mark.parametrize("field,body", list(_bad_bodies()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_parameters_are_400(server, field, body):
    error = _assert_openai_error(httpx.post(server.url + "/v1/completions", json=body, headers=AUTH), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None or field in error["param"] or error["param"] in ("prompt", "stop")


def test_length_limits_are_400_naming_the_limit(server):
    long_prompt = " ".join(f"w{i % 50 + 5}" for i in range(24))
    for body in ({**GOOD, "prompt": long_prompt}, {**GOOD, "max_tokens": 23},
                 {"model": "a", "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2}):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        error = _assert_openai_error(httpx.post(server.url + path, json=body, headers=AUTH), 400)
        assert "max-model-len" in error["message"] and error["code"] == "context_length_exceeded"
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny", prompt=long_prompt, max_tokens=1)


def test_unknown_model_is_404(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        for model in ("nope", "a@3", "tiny2", "A"):
            with pytest.raises(openai.NotFoundError) as caught:
                client.completions.create(model=model, prompt="w1", max_tokens=2)
            assert caught.value.body["code"] == "model_not_found" and model in caught.value.body["message"]
    _assert_openai_error(httpx.get(server.url + "/v1/nothing-here"), 404)


def test_keys_are_401_and_admin_without_a_key_is_refused(server, base_dir):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic " + API_KEY}):
        for method, path, body in (("POST", "/v1/completions", GOOD), ("GET", "/v1/models", None),
                                   ("POST", "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": "/x"}),
                                   ("POST", "/v1/unload_lora_adapter", {"lora_name": "a"})):
            response = httpx.request(method, server.url + path, json=body, headers=headers)
            assert _assert_openai_error(response, 401)["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.completions.create(model="tiny", prompt="w1", max_tokens=2)
    with serving(base_dir) as open_server:  # no --api-key: inference is open, admin is off
        assert httpx.post(open_server.url + "/v1/completions", json=GOOD).status_code == 200
        response = httpx.post(open_server.url + "/v1/load_lora_adapter", json={"lora_name": "z", "lora_path": "/x"},
                              headers=AUTH)
        assert _assert_openai_error(response, 403)["code"] == "admin_disabled"


def test_oversized_body_is_413(server):
    big = {**GOOD, "prompt": "w5 " * 2000}
    _assert_openai_error(httpx.post(server.url + "/v1/completions", json=big, headers=AUTH), 413)

    def chunks():  # no Content-Length: the limit still holds while the body streams
        for _ in range(10):
            yield b" " * 1000
    response = httpx.post(server.url + "/v1/completions", content=chunks(),
                          headers={**AUTH, "content-type": "application/json"})
    _assert_openai_error(response, 413)
    assert httpx.post(server.url + "/v1/completions", json=GOOD, headers=AUTH).status_code == 200


def test_full_queue_is_429_with_retry_after(base_dir):
    async def flood(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            body = {**GOOD, "max_tokens": 20, "ignore_eos": True}
            return await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(24)))

    with serving(base_dir, max_batch=1, max_queue=2) as small:
        responses = asyncio.run(flood(small.url))
        with openai.OpenAI(base_url=small.url + "/v1", api_key="x", max_retries=0) as client:
            assert client.completions.create(**GOOD).choices  # the server recovered
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses and set(statuses) == {200, 429}
    for response in responses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert _assert_openai_error(response, 429)["type"] == "rate_limit_error"


def test_draining_is_503(server):
    server.state.begin_drain()
    try:
        response = httpx.post(server.url + "/v1/completions", json=GOOD, headers=AUTH)
        assert _assert_openai_error(response, 503)["code"] == "draining" and "retry-after" in response.headers
        assert httpx.get(server.url + "/health").json()["status"] == "draining"
    finally:
        server.state.draining = False
    assert httpx.post(server.url + "/v1/completions", json=GOOD, headers=AUTH).status_code == 200


def _wait_idle(server, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/health", timeout=30).json()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.02)
    raise AssertionError(f"sequences still running: {health}")


async def _post_then_give_up(url: str, body: dict) -> None:
    """POST a non-streaming request and close its connection once the server is generating for it
    (its sequence runs, by /health), however long the machine takes to get there."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        posting = asyncio.create_task(http.post("/v1/completions", json=body))
        deadline = time.monotonic() + 60
        while (await http.get("/health")).json()["running"] == 0:
            assert not posting.done(), posting.result()
            assert time.monotonic() < deadline, "the request never started"
            await asyncio.sleep(0.02)
        posting.cancel()  # the client gives up: httpx closes the connection mid-request
        with contextlib.suppress(asyncio.CancelledError):
            await posting


def test_a_client_that_disconnects_mid_stream_frees_its_row(base_dir):
    with serving(base_dir, max_batch=2, max_model_len=4000) as server:
        generated = itertools.count()
        body = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 3900, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    next(generated)
                    break  # leaving the block closes the connection mid-stream
        health = _wait_idle(server)
        assert health["free_rows"] == 2
        assert server.state.engine.stats.tokens_generated < 3900
        # A non-streaming request whose client gives up is cancelled too.
        before = server.state.engine.stats.tokens_generated
        asyncio.run(_post_then_give_up(server.url, {**body, "stream": False}))
        _wait_idle(server)
        assert server.state.engine.stats.tokens_generated - before < 3900
        metrics = httpx.get(server.url + "/metrics").text
        assert "adapterkit_running_sequences 0.0" in metrics


def test_a_raw_socket_closed_mid_stream_frees_its_row(base_dir):
    with serving(base_dir, max_batch=1, max_model_len=4000) as server:
        payload = b'{"model":"tiny","prompt":"w1","max_tokens":3900,"ignore_eos":true,"stream":true}'
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            received = b""
            while b"data: " not in received:  # headers and chunks may come in separate reads
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
        _wait_idle(server)
        assert server.state.engine.stats.tokens_generated < 3900
