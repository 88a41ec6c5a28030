"""The default thread count (one per allowed CPU, the user's choice first) and sleeping OpenMP threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adapterkit.cli.main import main
from adapterkit.errors import SettingOutOfRangeError
from adapterkit.threads import allowed_cpus, configure_threads, default_thread_count


def test_one_thread_per_allowed_cpu_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_thread_count() == len(allowed_cpus()) == len(os.sched_getaffinity(0)) >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_thread_count() == 3
    for unusable in ("", "0", "-1", "two", "1.5"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert default_thread_count() == len(allowed_cpus())


@pytest.mark.slow  # end to end in real processes
def test_the_affinity_mask_bounds_the_default():
    """Under taskset (or a container's cpuset) the default follows the mask, not the machine's core count."""
    code = "from adapterkit.threads import default_thread_count; print(default_thread_count())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("bad", [0, -1, -8])
def test_fewer_than_one_thread_is_refused(bad):
    with pytest.raises(SettingOutOfRangeError, match="at least 1"):
        configure_threads(bad)


def test_the_cli_asks_openmp_to_sleep_unless_the_user_chose(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["inspect", "/no/such/adapter"]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["inspect", "/no/such/adapter"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    capsys.readouterr()


@pytest.fixture
def torch_threads():
    """--threads reaches torch in-process; give the rest of the session its own count back."""
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_train_uses_and_reports_the_thread_count(base_dir, train_jsonl, tmp_path, capsys, torch_threads):
    assert main(["train", "--base", str(base_dir), "--data", str(train_jsonl), "--targets", "q_proj", "--steps", "1",
                 "--batch-size", "2", "--threads", "1", "--output", str(tmp_path / "out")]) == 0
    assert "tokens/s on 1 thread)" in capsys.readouterr().out
    assert torch_threads.get_num_threads() == 1
