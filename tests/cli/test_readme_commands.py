"""The README's commands: the shell walkthrough runs as written (tiny base, 2 steps), every `adapterkit`
line of the CLI table names a real subcommand and real flags, and every `make` target it mentions exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapterkit.cli.main import build_parser
from adapterkit.training import ChatExample, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block_after(heading: str) -> list[str]:
    """Lines of the first fenced block after `heading`."""
    rest = README[README.index(heading):]
    body = re.search(r"```[a-z]*\n(.*?)```", rest, re.S)
    assert body, f"no code block after {heading!r}"
    return [line for line in body.group(1).splitlines() if line.strip()]


@pytest.mark.slow  # five real commands end to end, each paying python + torch startup
def test_shell_walkthrough_runs_as_written(base_dir, tmp_path):
    lines = block_after("### Train, try and score from the shell")
    assert [line.split("adapterkit ")[1].split()[0] for line in lines] == ["train", "generate", "store", "eval", "chat"]
    rows = [ChatExample.from_prompt(f"w{i} w{i + 1}", f"w{i + 1} w{i}") for i in range(10)]
    write_jsonl(tmp_path / "train.jsonl", rows[:8])
    write_jsonl(tmp_path / "held-out.jsonl", rows[8:])
    env = dict(os.environ, ADAPTERKIT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    outputs = []
    for line in lines:
        # The only edits: the tiny test base for the embedded SmolLM2, and 2 steps for 200.
        command = line.replace("--base smollm2", f"--base {base_dir}").replace("--steps 200", "--steps 2")
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        outputs.append(done.stdout)
    assert (tmp_path / "out" / "reverse" / "adapter_model.safetensors").is_file()
    assert len(outputs[1].splitlines()) == 1  # generate: one reply
    score = json.loads(outputs[3])
    assert score["total"] == 2 and 0 <= score["correct"] <= 2
    assert len(outputs[4].splitlines()) == 2  # chat: a reply from the adapter, then one from the base


def cli_table() -> list[str]:
    return [line for line in block_after("## The CLI") if line.startswith("adapterkit")]


@pytest.mark.parametrize("line", cli_table())
def test_cli_table_names_real_subcommands_and_flags(line, capsys):
    words = line.split()
    flags = re.findall(r"--[a-z][a-z-]*", line)
    subcommands = [] if words[1].startswith("--") else words[1:3] if words[1] == "store" else words[1:2]
    expanded = [subcommands[0], *subcommands[1].split("|")] if subcommands[:1] == ["store"] else subcommands
    targets = [[expanded[0], sub] for sub in expanded[1:]] if len(expanded) > 1 else [expanded]
    for argv in targets:
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([*argv, "--help"])
        assert stop.value.code == 0, line
        help_text = capsys.readouterr().out
        for flag in flags:
            assert flag in help_text, f"{flag} of {line!r} is not an option of {' '.join(argv) or 'adapterkit'}"


def test_every_make_target_in_the_readme_exists():
    targets = sorted(set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", README, re.M)))
    assert {"test", "test-fast", "lint", "demo", "bench"} <= set(targets)
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"make {target}: {dry.stderr}"


def test_the_thread_benchmark_the_readme_names_starts():
    done = subprocess.run([sys.executable, "-m", "bench.train_threads", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "--compare-rev" in done.stdout, done.stderr
