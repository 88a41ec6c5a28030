"""The parts of the Ray deployment that need no cluster: options (from `serve run` key=value strings and
`adapterkit serve --replicas`), the ingress's `model` -> multiplexed id mapping, and the in-process ASGI
call a replica answers through."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from adapterkit.cli.main import main
from adapterkit.errors import RayServeOptionError
from adapterkit.integrations.ray.asgi_call import HttpRequest, ResponseStart, call_asgi
from adapterkit.integrations.ray.ingress import multiplexed_model_id
from adapterkit.integrations.ray.options import RayServeOptions

NUMERIC = {"replicas": "int", "max_adapters_per_replica": "int", "max_batch": "int", "max_model_len": "int",
           "max_queue": "int", "replica_cpus": "float", "health_check_period_s": "float", "request_timeout_s": "float"}


def test_serve_run_arguments_become_typed_options():
    options = RayServeOptions.from_strings({"base": "/models/tiny", "store": "/shared", "replicas": "3",
                                            "replica_cpus": "0.5", "adapters": "a=/x/a,b=/x/b",
                                            "served_model_name": "tiny", "max_adapters_per_replica": "4"})
    assert (options.replicas, options.replica_cpus, options.max_adapters_per_replica) == (3, 0.5, 4)
    assert options.adapters == {"a": "/x/a", "b": "/x/b"} and options.base_name == "tiny"
    config = options.serve_config()  # what every replica runs: room for the multiplexer's adapters + start-up ones
    from adapterkit.serve.protocol import MAX_MERGED_ADAPTERS  # ... and a merged_adapters request's

    assert config.max_loras == 4 + 2 + MAX_MERGED_ADAPTERS + 1 and config.base_name == "tiny"


def bad_arguments():
    """Each numeric option with values that are not numbers or out of range, plus malformed others."""
    for key, kind in NUMERIC.items():
        for value in ("", "x", "1e", "nan" if kind == "int" else "2x", "0", "-1", "-0.5" if kind == "float" else "-3"):
            yield key, {key: value}
    yield "dtype", {"dtype": "int8"}
    yield "adapters", {"adapters": "noequals"}
    yield "adapters", {"adapters": "=dir"}
    yield "replicaz", {"replicaz": "2"}
    yield "store_url", {"store_url": "postgresql://db/x"}  # an index without a blobs root
    yield "max_model_len", {"max_model_len": "1"}


@pytest.mark.parametrize("key,args", list(bad_arguments()))
def test_bad_serve_run_arguments_are_refused_naming_the_option(key, args):
    with pytest.raises(RayServeOptionError) as refused:
        RayServeOptions.from_strings(args)
    message = str(refused.value)
    assert key in message or key.replace("_", "-") in message, message


@pytest.mark.parametrize("options", [["--replicas", "0"], ["--replicas", "-2"], ["--replicas", "2", "--replica-cpus", "0"],
                                     ["--replicas", "2", "--max-adapters-per-replica", "0"]])
def test_serve_replicas_refuses_bad_options_before_starting_ray(options, tmp_path, capsys):
    assert main(["serve", "--base", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert "adapterkit serve: error:" in err and err.count("\n") == 1, err


def test_the_ingress_tags_only_adapter_requests_with_a_multiplexed_id():
    options = RayServeOptions(served_model_name="base", adapters={"startup": "/x"})
    body = lambda model: json.dumps({"model": model, "prompt": "hi"}).encode()  # noqa: E731
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert multiplexed_model_id(path, body("reverse@prod"), options) == "reverse@prod"
        assert multiplexed_model_id(path, body("reverse"), options) == "reverse"
        # on every replica: any replica serves them
        assert multiplexed_model_id(path, body("base"), options) == ""
        assert multiplexed_model_id(path, body("startup"), options) == ""
    # not a generation request, or a body the replica's app answers with a 400
    shapes = [b"", b"{", b"[]", b"null", json.dumps({"model": 3}).encode(), json.dumps({"model": ""}).encode(),
              json.dumps({"prompt": "x"}).encode()]
    for path, shape in itertools.product(("/v1/completions", "/v1/chat/completions"), shapes):
        assert multiplexed_model_id(path, shape, options) == "", shape
    for path in ("/v1/models", "/health", "/metrics", "/", "/v1/load_lora_adapter"):
        assert multiplexed_model_id(path, body("reverse@prod"), options) == ""


def test_call_asgi_streams_the_response_and_reports_a_caller_that_left():
    seen: list[str] = []

    async def app(scope, receive, send):
        request = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": request["body"].upper(), "more_body": True})
        if scope["path"] == "/endless":
            seen.append((await receive())["type"])  # what uvicorn tells an app whose client went away
            return
        await send({"type": "http.response.body", "body": b"!", "more_body": False})

    async def run(path: str, take: int | None = None) -> list:
        parts = []
        stream = call_asgi(app, HttpRequest("POST", path, b"", ((b"host", b"x"),), b"hello"))
        async for part in stream:
            parts.append(part)
            if take is not None and len(parts) == take:
                await stream.aclose()
                break
        return parts

    start, *body = asyncio.run(run("/done"))
    assert isinstance(start, ResponseStart) and start.status == 201 and start.header(b"content-type") == b"text/event-stream"
    assert body == [b"HELLO", b"!"]
    assert len(asyncio.run(run("/endless", take=2))) == 2 and seen == ["http.disconnect"]


def test_the_benchmark_the_readme_names_starts():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bench.ray_serve", "--help"], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--per-replica" in done.stdout, done.stderr
