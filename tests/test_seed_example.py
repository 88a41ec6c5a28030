"""examples/seed.py (the PEFT tutorial, ported by changing its import) runs and says what it should."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the example unchanged, recording what save_pretrained wrote before the
# example's temporary folder disappears.
RUNNER = """
import os, runpy
import adapterkit.model.adapter_model as am
real = am.write_adapter_folder
def recording(target, *args, **kwargs):
    out = real(target, *args, **kwargs)
    for name in sorted(os.listdir(target)):
        print(f"SIZE {{name}} {{os.path.getsize(os.path.join(target, name))}}")
    return out
am.write_adapter_folder = recording
runpy.run_path(os.path.join({root!r}, "examples", "seed.py"), run_name="__main__")
"""


@pytest.mark.slow  # end to end in real processes
def test_seed_example_prints_peft_numbers_and_files():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", RUNNER.format(root=str(ROOT))], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364" in out
    files_line = next(line for line in out.splitlines() if line.startswith("Files created:"))
    assert "'adapter_config.json'" in files_line and "'adapter_model.safetensors'" in files_line
    assert "Adapter is active: ['default']" in out
    sizes = dict(line.split()[1:] for line in out.splitlines() if line.startswith("SIZE "))
    assert set(sizes) == {"adapter_config.json", "adapter_model.safetensors"}
    # 294,912 float32 parameters = 1,179,648 bytes, plus a small header.
    assert 1_179_648 < int(sizes["adapter_model.safetensors"]) < 1_250_000
