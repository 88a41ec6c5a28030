"""The default thread count: the free allowed cores, the user's choice first, decided before torch runs."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from adapterkit.cli.main import main
from adapterkit.errors import SettingOutOfRangeError
from adapterkit.threads import FREE_SHARE, allowed_cpus, configure_threads, count_idle, default_thread_count


def ticks(rng: random.Random, cpus: int) -> dict[int, tuple[int, int]]:
    return {cpu: (rng.randrange(10_000), rng.randrange(10_000, 20_000)) for cpu in range(cpus)}


def test_idle_count_over_generated_samples():
    rng = random.Random(0)
    for _ in range(300):
        cpus = rng.randrange(1, 9)
        before = ticks(rng, cpus)
        after, expected = {}, 0
        for cpu, (idle, total) in before.items():
            spent = rng.choice([0, rng.randrange(1, 400)])
            idle_share = rng.random()
            after[cpu] = (idle + round(spent * idle_share), total + spent)
            expected += spent == 0 or round(spent * idle_share) / spent >= FREE_SHARE
        allowed = sorted(rng.sample(range(cpus), rng.randrange(1, cpus + 1)))
        expected_allowed = sum(
            1 for cpu in allowed
            if after[cpu][1] == before[cpu][1] or (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1]) >= FREE_SHARE
        )
        assert count_idle(before, after, allowed) == expected_allowed
        assert count_idle(before, after, list(range(cpus))) == expected
    # a CPU missing from either sample (offline) is not counted as free
    assert count_idle({0: (0, 0)}, {0: (10, 10), 1: (10, 10)}, [0, 1]) == 1


def test_user_choice_wins_and_bounds_hold(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_thread_count() == 3
    for unusable in ("", "0", "-1", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert 1 <= default_thread_count() <= len(allowed_cpus())


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


def test_train_reports_and_uses_the_thread_count(base_dir, train_jsonl, tmp_path):
    done = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", "train", "--base", str(base_dir),
                           "--data", str(train_jsonl), "--targets", "q_proj", "--steps", "1", "--batch-size", "2",
                           "--threads", "1", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tokens/s on 1 thread)" in done.stdout
