"""`adapterkit combine`: in a real subprocess, the folder it writes equals the API's combination;
bad arguments (run in-process, a subprocess costs seconds of imports each) end in one line
on stderr and a non-zero exit, with no folder written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.cli.main import main
from helpers import logits, max_diff, randomize_adapter


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "combine", *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def two_adapters(tmp_path, base_dir):
    folders = {}
    for seed, name in enumerate(("math", "code")):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        randomize_adapter(model, seed=seed)
        folders[name] = model.save_pretrained(tmp_path / name)
    return folders


@pytest.mark.slow  # end to end in real processes
def test_combine_writes_the_same_adapter_as_the_api(tmp_path, base_dir, two_adapters):
    out = tmp_path / "combined"
    done = run_cli("--base", str(base_dir), "--adapter", f"math={two_adapters['math']}",
                   "--adapter", f"code={two_adapters['code']}", "--weights", "0.7,-0.3", "--type", "dare_ties",
                   "--density", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "rank 4" in done.stdout and (out / "adapter_model.safetensors").is_file()

    reference = AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), two_adapters["math"],
                                             adapter_name="math")
    reference.load_adapter(two_adapters["code"], adapter_name="code")
    reference.add_weighted_adapter(["math", "code"], [0.7, -0.3], "mix", combination_type="dare_ties", density=1.0)
    reference.set_adapter("mix")
    written = AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    assert max_diff(logits(written), logits(reference)) <= 1e-6
    assert max_diff(logits(written), logits(AutoModelForCausalLM.from_pretrained(base_dir))) > 1e-3


@pytest.mark.parametrize("argv,fragment", [
    (["--adapter", "mathfolder"], "NAME=DIR"),
    (["--adapter", "default={math}"], "reserved"),
    (["--adapter", "math={math}", "--adapter", "math={code}"], "twice"),
    (["--adapter", "math={math}", "--adapter", "code={code}", "--weights", "1"], "1 number(s) for 2"),
    (["--adapter", "math={math}", "--adapter", "code={code}", "--weights", "1,x"], "comma-separated"),
    (["--adapter", "math={math}", "--adapter", "code={code}", "--type", "ties"], "density"),
    (["--adapter", "math={math}", "--adapter", "code={code}", "--type", "ties", "--density", "2"], "density"),
    (["--adapter", "math={math}", "--adapter", "code={tmp}/nowhere"], "nowhere"),
])
def test_bad_arguments_are_one_line_errors(argv, fragment, tmp_path, base_dir, two_adapters, capsys):
    argv = [a.format(math=two_adapters["math"], code=two_adapters["code"], tmp=tmp_path) for a in argv]
    out = tmp_path / "combined"
    assert main(["combine", "--base", str(base_dir), *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after any progress bar of the base's load
    assert error.startswith("adapterkit combine: error:") and fragment in error
    assert not out.exists()
