"""How many CPU threads torch should use: the free cores, not every core.

torch's default is one OpenMP thread per core, and OpenMP threads spin while they
wait for each other. Beside another CPU-heavy process that is the worst case: our
threads take turns with it on the same cores, and every barrier waits for a thread
that is not running. `adapterkit train` measured 7x slower that way (bench/train_threads.py).
So the commands (1) ask OpenMP to sleep, not spin, while waiting, and (2) start with
one thread per core that is idle right now, never more than the cores we may run on.

Both are decided once, before torch runs its first operation: OpenMP reads its
environment when torch is imported, and torch's thread pool is sized on first use.
Nothing here imports torch at module level, so the CLI can call
`prefer_sleeping_threads()` before anything imports it.
"""

from __future__ import annotations

import os
import time

from adapterkit.errors import SettingOutOfRangeError

# How long to watch the CPUs before choosing; long enough to see a busy neighbour, short beside a model load.
SAMPLE_SECONDS = 0.2
# A core counts as free when at least this share of it was idle during the sample.
FREE_SHARE = 0.5


def prefer_sleeping_threads() -> None:
    """Ask OpenMP to block, not spin, while waiting (unless the user chose a policy).

    Only effective before torch is imported; the CLI calls it first thing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times() -> dict[int, tuple[int, int]]:
    """cpu number -> (idle ticks, total ticks), from /proc/stat (Linux)."""
    times = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def free_cpus(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """How many of the allowed CPUs were mostly idle over the last `sample_seconds`.

    Falls back to the 1-minute load average where /proc/stat does not exist.
    """
    allowed = allowed_cpus()
    try:
        before = _cpu_times()
        time.sleep(sample_seconds)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0, len(allowed) - round(load))
    return count_idle(before, after, allowed)


def count_idle(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: list[int]) -> int:
    """Of `cpus`, how many were idle for at least FREE_SHARE of the ticks between two `_cpu_times()`."""
    free = 0
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            continue  # offline, or hot-plugged during the sample
        idle = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        if total <= 0 or idle / total >= FREE_SHARE:  # no ticks at all: nothing ran there
            free += 1
    return free


def default_thread_count() -> int:
    """OMP_NUM_THREADS if the user set it, else the free allowed cores (at least 1)."""
    chosen = os.environ.get("OMP_NUM_THREADS", "").strip()
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    return max(1, min(len(allowed_cpus()), free_cpus()))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count once, before the first op; returns the count used.

    `threads=None` picks `default_thread_count()`.
    """
    if threads is not None and threads < 1:
        raise SettingOutOfRangeError(f"thread count must be at least 1, got {threads}; pass --threads 1 or more")
    count = threads if threads is not None else default_thread_count()
    import torch

    torch.set_num_threads(count)
    return count
