"""`adapterkit serve` as a real subprocess: start-up adapters load before the port opens (a failure
exits with the error), the address and adapters are printed, SIGTERM drains requests in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from serve_helpers import free_port

from adapterkit.cli.main import main

SERVE = [sys.executable, "-c", "from adapterkit.cli.main import main; raise SystemExit(main())", "serve"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _start(base_dir, *options):
    port = free_port()
    process = subprocess.Popen([*SERVE, "--base", str(base_dir), "--port", str(port), "--max-model-len", "32",
                                *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60
    line = process.stdout.readline()  # the "listening on" line, printed once the port is open
    assert "listening on" in line, (line, process.stderr.read() if process.poll() is not None else "")
    assert time.monotonic() < deadline
    return process, port, line


def test_start_prints_address_and_adapters_and_sigterm_drains_in_flight(base_dir, adapter_dirs):
    process, port, line = _start(base_dir, "--adapter", f"first={adapter_dirs['a00']}",
                                 "--adapter", f"second={adapter_dirs['a01']}")
    try:
        assert f"http://127.0.0.1:{port}" in line and "first, second" in line
        url = f"http://127.0.0.1:{port}"
        chunks: list[str] = []
        began = threading.Event()

        def long_stream():
            body = {"model": "first", "prompt": "w1 w2", "max_tokens": 29, "temperature": 0.8, "seed": 1,
                    "stream": True, "stop": ["never-appears"]}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
                for raw in response.iter_lines():
                    if raw:
                        chunks.append(raw)
                        began.set()

        client = threading.Thread(target=long_stream)
        client.start()
        assert began.wait(30)
        process.send_signal(signal.SIGTERM)
        client.join(60)
        # uvicorn re-raises the signal once it has drained, so the exit status still says SIGTERM.
        assert process.wait(60) in (0, -signal.SIGTERM)
        assert chunks[-1] == "data: [DONE]"  # the stream in flight finished despite the signal
        finishes = [json.loads(c[6:])["choices"][0]["finish_reason"] for c in chunks[:-1]]
        assert finishes[-1] in ("length", "stop") and "abort" not in finishes
        try:
            httpx.get(url + "/health", timeout=2)
            raise AssertionError("the server still answers after draining")
        except httpx.ConnectError:
            pass
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_start_up_adapter_that_fails_to_load_exits_with_the_error(base_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    assert main(["serve", "--base", str(base_dir), "--port", str(free_port()), "--adapter", f"bad={broken}"]) == 2
    out, err = capsys.readouterr()
    assert "adapterkit serve: error:" in err and "broken" in err and "listening" not in out


def test_bad_options_fail_before_loading(tmp_path, capsys):
    for options in (["--adapter", "noequals"], ["--adapter", f"x={tmp_path / 'missing'}"], ["--max-batch", "0"],
                    ["--adapter", f"x={tmp_path}", "--adapter", f"x={tmp_path}"], ["--api-key", " "]):
        assert main(["serve", "--base", str(tmp_path / "nowhere"), *options]) == 2, options
        assert "adapterkit serve: error:" in capsys.readouterr().err, options
