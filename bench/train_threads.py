"""`adapterkit train` tokens/s alone and beside one busy process, for the thread policy.

    python -m bench.train_threads                       # this tree's default, alone vs busy
    python -m bench.train_threads --compare-rev 757d9db # and the code of that commit, before the change
    python -m bench.train_threads --threads 2           # and an explicit --threads 2

Each run is the real command in a subprocess (`python -m adapterkit.cli.main train`) on
the embedded SmolLM2 (or --base), a few optimizer steps, with a time limit. "Busy"
starts one `python -c 'while True: pass'` beside it (--busy matmul: a torch matmul
loop on as many threads as there are cores, which fights harder). The older revision
runs from `git archive REV src` unpacked in a temporary folder. Variants are
interleaved, so that a shared machine's drifting load hits them alike; the figure
is tokens/s as the command prints it, median of --repeat runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = {
    "spin": "while True: pass",
    "matmul": "import torch\na = torch.randn(512, 512)\nwhile True: a @ a",
}
TOKENS_PER_S = re.compile(r"\(([\d.]+) tokens/s")


def write_data(path: Path, rows: int = 64) -> None:
    from adapterkit.training import make_task, write_jsonl

    task = make_task("reverse", quick=True)
    write_jsonl(path, (task.train * (rows // len(task.train) + 1))[:rows])


def source_tree(rev: str, into: Path) -> Path:
    """`src/` of git revision `rev`, unpacked under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def train_once(src: Path, data: Path, out: Path, base: str, steps: int, extra: list[str], timeout: float,
               nice: int) -> float | None:
    """tokens/s as the command prints it; None if it ran past `timeout`."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore")
    for inherited in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"):
        env.pop(inherited, None)  # measure each variant's own defaults
    argv = [sys.executable, "-m", "adapterkit.cli.main", "train", "--base", base, "--data", str(data),
            "--steps", str(steps), "--batch-size", "8", "--output", str(out), *extra]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=_niced(nice))
    except subprocess.TimeoutExpired:
        return None
    found = TOKENS_PER_S.search(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"train failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return float(found.group(1))


def _niced(nice: int):
    """Run the child at another priority (negative needs root), so a shared machine's other work weighs less."""
    return (lambda: os.nice(nice)) if nice else None


def measure(variants: dict[str, tuple[Path, list[str]]], base: str, steps: int, repeat: int, busy: str,
            timeout: float, work: Path, nice: int = 0) -> dict[str, dict[str, float | None]]:
    data = work / "train.jsonl"
    write_data(data)
    # The first use of the embedded base converts it from GGUF (~20 s); do that outside the measurement.
    subprocess.run([sys.executable, "-c", f"from adapterkit.hf import load_base; load_base({base!r})"],
                   env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), check=True, capture_output=True, timeout=timeout)
    results: dict[str, dict[str, list[float | None]]] = {name: {"alone": [], "busy": []} for name in variants}
    runs = itertools.count()
    for round_ in range(repeat):
        for condition in ("alone", "busy"):
            for name, (src, extra) in variants.items():
                neighbour = None
                if condition == "busy":
                    neighbour = subprocess.Popen([sys.executable, "-c", BUSY[busy]], preexec_fn=_niced(nice))
                    time.sleep(1.0)  # let it reach full speed before the command chooses its threads
                try:
                    speed = train_once(src, data, work / f"out-{next(runs)}", base, steps, extra, timeout, nice)
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
                load = os.getloadavg()[0]
                shown = f"{speed:7.0f} tokens/s" if speed is not None else f"timed out (> {timeout:.0f} s)"
                print(f"round {round_ + 1} {condition:5s} {name:28s} {shown}  (load {load:.1f})", flush=True)
                results[name][condition].append(speed)
    # A timed-out run counts as 0 tokens/s: slower than any that finished.
    return {name: {cond: statistics.median([v or 0.0 for v in values]) for cond, values in conds.items()}
            for name, conds in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--busy", choices=sorted(BUSY), default="spin")
    parser.add_argument("--compare-rev", help="also run the code of this git revision (e.g. the commit before)")
    parser.add_argument("--threads", type=int, action="append", default=[],
                        help="also run this tree with an explicit --threads N (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it is abandoned")
    parser.add_argument("--nice", type=int, default=0,
                        help="priority of the measured command and its busy neighbour (e.g. -10 as root on a shared machine)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        work = Path(tmp)
        variants: dict[str, tuple[Path, list[str]]] = {}
        if args.compare_rev:
            variants[f"{args.compare_rev} (default)"] = (source_tree(args.compare_rev, work), [])
        variants["this tree (default)"] = (ROOT / "src", [])
        for n in args.threads:
            variants[f"this tree --threads {n}"] = (ROOT / "src", ["--threads", str(n)])
        table = measure(variants, args.base, args.steps, args.repeat, args.busy, args.timeout, work, args.nice)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.json:
        print(json.dumps({"cores": cores, "busy": args.busy, "tokens_per_s": table}, indent=2))
        return
    print(f"\n{cores} cores; busy neighbour: {args.busy}; median of {args.repeat}; base {args.base}, {args.steps} steps; "
          f"0 = timed out")
    print(f"{'variant':30s} {'alone':>8s} {'busy':>8s} {'busy/alone':>11s}")
    for name, row in table.items():
        alone, busy_ = row["alone"] or 0.0, row["busy"] or 0.0
        ratio = f"{busy_ / alone:11.2f}" if alone else f"{'-':>11s}"
        print(f"{name:30s} {alone:8.0f} {busy_:8.0f} {ratio}")


if __name__ == "__main__":
    main()
