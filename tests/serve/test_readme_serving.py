"""Every command of the README's serving section, run as written against a real `adapterkit serve`
subprocess (the tiny base and two tiny adapters stand in for SmolLM2 and out/reverse, out/shout);
then SIGTERM, which must let a stream in flight finish (one subprocess for both: each costs seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port

README = Path(__file__).parents[2] / "README.md"


def serving_section() -> tuple[list[str], str]:
    text = README.read_text()
    section = text[text.index("## Serving"):]
    section = section[: section.index("\n## ", 1)]
    section = section.split("\n### ")[0]  # subsections are run by the tests they name
    bash = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines() if line]
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return bash, python


@pytest.mark.slow  # end to end in real processes
def test_every_readme_serving_command_runs_then_sigterm_drains(base_dir, adapter_dirs, tmp_path):
    bash, python = serving_section()
    serve_line, curls = bash[0], bash[1:]
    assert serve_line.startswith("adapterkit serve") and all(c.startswith("curl ") for c in curls)
    port = free_port()

    def local(command: str) -> str:
        return (command.replace("8000", str(port)).replace("out/reverse", str(adapter_dirs["a00"]))
                .replace("out/shout", str(adapter_dirs["a01"])))

    argv = shlex.split(local(serve_line).replace("--base smollm2", f"--base {base_dir} --served-model-name smollm2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPTERKIT_HOME": str(tmp_path)}  # bare --store: a store under here
    server = subprocess.Popen([sys.executable, "-m", "adapterkit.cli.main", *argv[1:]], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        line = server.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "reverse, shout" in line, line
        outputs = {}
        for curl in curls:
            result = subprocess.run(["bash", "-c", local(curl)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0 and result.stdout, (curl, result.stderr)
            outputs[curl] = result.stdout
        by_path = {re.search(r"8000(/\S*)", c).group(1): out for c, out in outputs.items()}
        assert {m["id"] for m in json.loads(by_path["/v1/models"])["data"]} == {"smollm2", "reverse", "shout"}
        assert json.loads(by_path["/v1/chat/completions"])["choices"][0]["finish_reason"] in ("stop", "length")
        assert by_path["/v1/completions"].rstrip().endswith("data: [DONE]")
        assert by_path["/v1/load_lora_adapter"].startswith("Success")
        assert by_path["/v1/unload_lora_adapter"].startswith("Success")
        assert json.loads(by_path["/health"])["status"] == "ok"
        assert "adapterkit_adapter_loads_total 3.0" in by_path["/metrics"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(local(python), "README.md", "exec"), {})
        assert printed.getvalue().strip()
        assert_sigterm_drains(server, f"http://127.0.0.1:{port}")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(60)


def assert_sigterm_drains(server: subprocess.Popen, url: str) -> None:
    """SIGTERM while a stream is in flight: the stream still ends normally, then the server exits."""
    chunks: list[str] = []
    began = threading.Event()

    def long_stream():
        body = {"model": "reverse", "prompt": "w1 w2", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer sk-local"}) as response:
            for raw in response.iter_lines():
                if raw:
                    chunks.append(raw)
                    began.set()

    client = threading.Thread(target=long_stream)
    client.start()
    assert began.wait(30)
    server.send_signal(signal.SIGTERM)
    client.join(60)
    # uvicorn re-raises the signal once it has drained, so the exit status still says SIGTERM.
    assert server.wait(60) in (0, -signal.SIGTERM)
    assert chunks[-1] == "data: [DONE]"  # the stream in flight finished despite the signal
    finishes = [json.loads(c[6:])["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == "length" and finishes.count("length") == 1 and "abort" not in finishes
    try:
        httpx.get(url + "/health", timeout=2)
        raise AssertionError("the server still answers after draining")
    except httpx.ConnectError:
        pass
