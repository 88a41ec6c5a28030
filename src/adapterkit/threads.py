"""How torch's CPU threads behave beside other busy processes: they sleep while they wait.

OpenMP threads spin while they wait for each other at the end of every parallel
region. Beside another CPU-heavy process that is the worst case: the threads take
turns with it on the same cores, and every wait burns the time slice a late
thread needed. `adapterkit train` measured 7x slower that way. With waiting threads
asleep (OMP_WAIT_POLICY=PASSIVE) training beside a busy process keeps its speed.

The thread count itself matters much less, and fewer threads did worse: beside one
busy process on 2 cores, 2 sleeping threads trained at about twice the tokens/s of
1 thread (the scheduler shares a core per runnable thread, not per process). So
the default is one thread per core this process may run on (its affinity mask,
which containers and taskset narrow), unless the user chose (`--threads`,
OMP_NUM_THREADS). bench/train_threads.py measures all of this.

Both are decided once, before torch runs its first operation: OpenMP reads its
environment when torch is imported, and torch's thread pool is sized on first use.
Nothing here imports torch at module level, so the CLI can call
`prefer_sleeping_threads()` before anything imports it.
"""

from __future__ import annotations

import os

from adapterkit.errors import SettingOutOfRangeError


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


def default_thread_count() -> int:
    """OMP_NUM_THREADS if the user set it to a positive number, else one thread per allowed CPU."""
    chosen = os.environ.get("OMP_NUM_THREADS", "").strip()
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    return len(allowed_cpus())


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
