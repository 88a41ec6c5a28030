"""Every command of the README's serving section, run as written against a real `adapterkit serve`
subprocess (the tiny base and two tiny adapters stand in for SmolLM2 and out/reverse, out/shout)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from serve_helpers import free_port

README = Path(__file__).parents[2] / "README.md"


def serving_section() -> tuple[list[str], str]:
    text = README.read_text()
    section = text[text.index("## Serving"):]
    section = section[: section.index("\n## ", 1)]
    bash = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines() if line]
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return bash, python


def test_every_serving_command_in_the_readme_runs(base_dir, adapter_dirs, tmp_path):
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
    finally:
        server.terminate()
        server.wait(60)
