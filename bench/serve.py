"""`adapterkit serve` under load, on the embedded SmolLM2 (python -m bench.serve).

A real server subprocess; an asyncio + httpx load generator in this process:
- the grid: C concurrent clients (closed loop, streaming) over k distinct adapters;
  per cell output tokens/s, time to first token (TTFT) and inter-token latency (ITL)
  at p50 / p99;
- baselines, in this process with the same torch threads: a naive loop serving one
  request at a time (set_adapter + generate), and one batched in-process generate
  over the same 32 prompts and max_tokens;
- cold against warm: TTFT of the first request for a store ref against the next one;
- memory: the server's RSS after cycling 2,000 distinct store refs through
  --max-loras 32, against its RSS after the first 100.

Every request asks for exactly max_tokens tokens (temperature 0, ignore_eos), so
every path generates the same work. Writes bench/results/serve.json and SERVE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TARGETS = ["q_proj", "v_proj"]
WORDS = ("apple banana cherry river stone cloud paper garden silver window orange forest candle mirror "
         "rocket pencil violet harbor meadow lantern").split()


def log(message: str) -> None:
    print(f"[bench serve {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prompt_for(i: int) -> str:
    words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6)]
    return f"Repeat these words in reverse order: {' '.join(words)}."


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- setup --------------------------------------------------------------------------------
def make_adapters(base, root: Path, count: int) -> list[Path]:
    """`count` random rank-8 adapters on q and v, trained-looking (B non-zero), saved as PEFT folders."""
    import torch

    from adapterkit import AdapterModel, LoraConfig

    model = AdapterModel(base)
    folders = []
    for i in range(count):
        name = f"n{i:02d}"
        model.add_adapter(name, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
        model.set_adapter(name)  # only the active adapter's factors are trainable: scale this one alone
        with torch.no_grad():
            for param in model.get_base_model().parameters():
                if param.requires_grad:
                    param.mul_(0.05)
        folders.append(model.save_pretrained(root / name, selected_adapters=[name]) / name)
    model.unload()
    return folders


def fill_store(root: Path, folder: Path, count: int) -> None:
    """`count` distinct store names over one folder (blobs are deduplicated: each name loads as its own adapter)."""
    from adapterkit.store import AdapterStore

    store = AdapterStore(root, durable=False)
    for i in range(count):
        store.put(folder, name=f"c{i:04d}")


class Server:
    def __init__(self, args: list[str], threads: int) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen([sys.executable, "-m", "adapterkit.cli.main", "serve", "--port", str(self.port),
                                         *args], stdout=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if "listening" not in line:
            self.process.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


# --- the load generator ----------------------------------------------------------------------
async def one_request(http, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    arrivals = []
    tokens = 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
    return {"ttft": arrivals[0] - sent if arrivals else float("nan"),
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])], "tokens": tokens}


async def run_cell(url: str, clients: int, models: list[str], requests_per_client: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def client(c: int) -> list[dict]:
            out = []
            for r in range(requests_per_client):
                i = c * requests_per_client + r
                out.append(await one_request(http, models[i % len(models)], prompt_for(i), max_tokens))
            return out

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "adapters": len(models), "requests": len(results), "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1000 * percentile(ttft, 50), "ttft_p99_ms": 1000 * percentile(ttft, 99),
            "itl_p50_ms": 1000 * percentile(gaps, 50), "itl_p99_ms": 1000 * percentile(gaps, 99)}


# --- in-process baselines -------------------------------------------------------------------
def naive_loop(base, tokenizer, folders: list[Path], requests: int, max_tokens: int) -> dict:
    """One request at a time: set_adapter + generate, as an application without a server would."""
    import torch

    from adapterkit import AdapterModel

    model = AdapterModel(base)
    for folder in folders:
        model.load_adapter(folder, adapter_name=folder.name)
    model.eval()
    names = [f.name for f in folders]
    tokens = 0
    with torch.inference_mode():
        _generate(model, tokenizer, [prompt_for(0)], max_tokens)  # warm-up
        start = time.perf_counter()
        for i in range(requests):
            model.set_adapter(names[i % len(names)])
            tokens += _generate(model, tokenizer, [prompt_for(i)], max_tokens)
        wall = time.perf_counter() - start
    model.unload()
    return {"requests": requests, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def batched_generate(base, tokenizer, folder: Path, prompts: int, max_tokens: int) -> dict:
    """One in-process generate over `prompts` prompts with one adapter: the server's ceiling."""
    import torch

    from adapterkit import AdapterModel

    model = AdapterModel(base)
    model.load_adapter(folder, adapter_name="only")
    model.eval()
    with torch.inference_mode():
        _generate(model, tokenizer, [prompt_for(i) for i in range(4)], 4)  # warm-up
        start = time.perf_counter()
        tokens = _generate(model, tokenizer, [prompt_for(i) for i in range(prompts)], max_tokens)
        wall = time.perf_counter() - start
    model.unload()
    return {"prompts": prompts, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def _generate(model, tokenizer, prompts: list[str], max_tokens: int) -> int:
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)


# --- cold / warm and memory -----------------------------------------------------------------
async def cold_and_warm(url: str, refs: list[str]) -> dict:
    """TTFT of the first request for each ref (cold: loaded from the store on demand, evicting an
    idle adapter) and of the next one (warm); and the server's own load time, from /metrics."""
    import httpx

    cold, warm = [], []
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        before = _metric(await http.get("/metrics"), "adapterkit_adapter_load_seconds_total")
        loads = _metric(await http.get("/metrics"), "adapterkit_adapter_loads_total")
        for ref in refs:
            cold.append((await one_request(http, ref, prompt_for(1), 2))["ttft"])
            warm.append((await one_request(http, ref, prompt_for(1), 2))["ttft"])
        load_s = _metric(await http.get("/metrics"), "adapterkit_adapter_load_seconds_total") - before
        loads = _metric(await http.get("/metrics"), "adapterkit_adapter_loads_total") - loads
    added = [c - w for c, w in zip(cold, warm)]
    return {"refs": len(refs), "cold_ttft_p50_ms": 1000 * statistics.median(cold),
            "warm_ttft_p50_ms": 1000 * statistics.median(warm), "added_p50_ms": 1000 * statistics.median(added),
            "server_load_mean_ms": 1000 * load_s / max(loads, 1)}


def _metric(response, name: str) -> float:
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


async def cycle(server: Server, names: list[str], concurrency: int, checkpoints: set[int]) -> dict[int, int]:
    import httpx

    rss: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
        for start in range(0, len(names), concurrency):
            group = names[start:start + concurrency]
            await asyncio.gather(*(one_request(http, n, prompt_for(2), 1) for n in group))
            done = start + len(group)
            for point in sorted(checkpoints):
                if done >= point and point not in rss:
                    await asyncio.sleep(0.2)
                    rss[point] = server.rss()
                    log(f"cycled {done} adapters: server RSS {rss[point] / 2**20:.0f} MiB")
    return rss


# --- the run ------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller grid and 500 adapters cycled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and baselines (default 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per request (default 16)")
    parser.add_argument("--cycle", type=int, default=2000, help="distinct adapters cycled for the memory figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--parts", default="baselines,grid,cold,memory",
                        help="parts to measure; the others keep their figures from the previous --out/serve.json")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    previous_file = args.out / "serve.json"
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else {}
    import torch

    torch.set_num_threads(args.threads)
    from adapterkit.hf import load_base

    grid_clients = [1, 8, 32]
    grid_adapters = [1, 8, 32]
    cycled = 500 if args.quick else args.cycle
    if args.quick:
        grid_clients, grid_adapters = [1, 32], [1, 32]
    per_client = {1: 3, 8: 2, 32: 2}
    M = args.max_tokens
    results: dict = {"settings": {"command": "python -m bench.serve" + (" --quick" if args.quick else "")
                                  + (f" --parts {args.parts}" if parts != {"baselines", "grid", "cold", "memory"} else ""),
                                  "threads": args.threads, "max_tokens": M, "cpu_count": os.cpu_count(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cycled": cycled,
                                  "load_average_at_start": os.getloadavg()[0]}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adapterkit-bench-serve-") as tmp:
        work = Path(tmp)
        base, tokenizer = load_base("smollm2")
        log("making 32 adapters and the store")
        folders = make_adapters(base, work / "adapters", 32)
        fill_store(work / "store", folders[0], (cycled if "memory" in parts else 0) + 20)
        for part, keys in (("baselines", ("naive", "batched_generate")), ("grid", ("grid",)),
                           ("cold", ("cold_warm",)), ("memory", ("memory",))):
            if part not in parts:
                results.update({k: previous[k] for k in keys if k in previous})
                results["settings"].setdefault("kept_from_previous_run", []).append(part)
        if "baselines" in parts:
            log("baselines in-process")
            results["naive"] = naive_loop(base, tokenizer, folders, 8, M)
            results["batched_generate"] = batched_generate(base, tokenizer, folders[0], 32, M)
            log(f"naive {results['naive']['tokens_per_s']:.1f} tok/s; batched generate "
                f"{results['batched_generate']['tokens_per_s']:.1f} tok/s")
        del base
        server = Server(["--base", "smollm2", "--max-loras", "32", "--max-batch", "32", "--max-model-len", "128",
                         "--max-queue", "1024", "--store", str(work / "store"),
                         *[a for f in folders for a in ("--adapter", f"{f.name}={f}")]], args.threads)
        try:
            asyncio.run(run_cell(server.url, 4, ["n00", "smollm2"], 1, 4))  # warm-up
            if "grid" in parts:
                results["grid"] = []
            for clients in grid_clients if "grid" in parts else []:
                for k in grid_adapters:
                    cell = asyncio.run(run_cell(server.url, clients, [f.name for f in folders[:k]],
                                                per_client[clients], M))
                    log(f"C={clients} k={k}: {cell['tokens_per_s']:.1f} tok/s, TTFT p50 {cell['ttft_p50_ms']:.0f} ms, "
                        f"ITL p50 {cell['itl_p50_ms']:.0f} ms")
                    results["grid"].append(cell)
            if "cold" in parts:
                first = cycled if "memory" in parts else 0
                results["cold_warm"] = asyncio.run(cold_and_warm(server.url, [f"c{first + i:04d}" for i in range(10)]))
                log(f"cold/warm: {results['cold_warm']}")
            if "memory" in parts:
                rss = asyncio.run(cycle(server, [f"c{i:04d}" for i in range(cycled)], 8, {100, cycled}))
                results["memory"] = {"rss_after_100_mib": rss[100] / 2**20,
                                     f"rss_after_{cycled}_mib": rss[cycled] / 2**20,
                                     "ratio": rss[cycled] / rss[100], "cycled": cycled}
        finally:
            server.stop()
    results["wall_s"] = time.perf_counter() - started
    results["settings"]["load_average_at_end"] = os.getloadavg()[0]
    results["ratios"] = ratios(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    (args.out / "SERVE.md").write_text(report(results))
    print(report(results))
    return results


def ratios(results: dict) -> dict:
    cells = {(c["clients"], c["adapters"]): c for c in results.get("grid", [])}
    top = max(c for c, _ in cells) if cells else 0
    out = {}
    one, many = cells.get((top, 1)), cells.get((top, max(k for c, k in cells if c == top))) if cells else None
    if one and many:
        out[f"C={top}: k={many['adapters']} / k=1 throughput"] = (many["tokens_per_s"] / one["tokens_per_s"], ">= 0.85")
        out[f"C={top}: server / naive loop throughput"] = (many["tokens_per_s"] / results["naive"]["tokens_per_s"], ">= 3")
        out[f"C={top}, k=1: server / batched in-process generate"] = (
            one["tokens_per_s"] / results["batched_generate"]["tokens_per_s"], ">= 0.9")
    if "cold_warm" in results:
        out["TTFT added by a cold store ref (ms, p50 of cold - warm)"] = (results["cold_warm"]["added_p50_ms"], "<= 25")
        out["server-side load of a cold store ref (ms, mean)"] = (results["cold_warm"]["server_load_mean_ms"], "<= 25")
    if "memory" in results:
        out[f"RSS after {results['memory']['cycled']} adapters / after 100"] = (results["memory"]["ratio"], "<= 1.05")
    return out


def report(results: dict) -> str:
    s = results["settings"]
    kept = s.get("kept_from_previous_run")
    lines = [f"# `adapterkit serve` under load ({s['command']})", "",
             *([f"Parts {', '.join(kept)} are kept from the previous run.", ""] if kept else []),
             f"SmolLM2-135M (float32, CPU, {s['threads']} torch thread(s), {s['cpu_count']} cores shared), "
             f"{s['max_tokens']} tokens per request (temperature 0, ignore_eos), prompts of ~20 tokens, "
             "rank-8 adapters on q_proj and v_proj; streaming requests over HTTP from an asyncio + httpx "
             f"closed-loop load generator in another process. Wall time {results.get('wall_s', 0):.0f} s; "
             f"machine load average {s.get('load_average_at_start', float('nan')):.1f} at the start, "
             f"{s.get('load_average_at_end', float('nan')):.1f} at the end (other jobs share the cores: ratios "
             "between parts measured minutes apart carry that noise).", "",
             "| clients C | adapters k | requests | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in results.get("grid", []):
        lines.append(f"| {c['clients']} | {c['adapters']} | {c['requests']} | {c['tokens_per_s']:.1f} | "
                     f"{c['ttft_p50_ms']:.0f} | {c['ttft_p99_ms']:.0f} | {c['itl_p50_ms']:.0f} | {c['itl_p99_ms']:.0f} |")
    naive, batched = results["naive"], results["batched_generate"]
    lines += ["", f"Naive loop (set_adapter + generate, one request at a time, in-process): "
              f"{naive['tokens_per_s']:.1f} tok/s over {naive['requests']} requests.",
              f"One batched in-process generate over {batched['prompts']} prompts (one adapter): "
              f"{batched['tokens_per_s']:.1f} tok/s."]
    if "cold_warm" in results:
        cw = results["cold_warm"]
        lines.append(f"Cold store ref: TTFT p50 {cw['cold_ttft_p50_ms']:.0f} ms against {cw['warm_ttft_p50_ms']:.0f} ms "
                     f"warm ({cw['refs']} refs; the cold load evicts an idle adapter first).")
    if "memory" in results:
        m = results["memory"]
        after = m[f"rss_after_{m['cycled']}_mib"]
        lines.append(f"Server RSS: {m['rss_after_100_mib']:.0f} MiB after 100 distinct adapters through --max-loras 32, "
                     f"{after:.0f} MiB after {m['cycled']}.")
    lines += ["", "| target | measured | wanted |", "|---|---|---|"]
    for name, (value, wanted) in results["ratios"].items():
        lines.append(f"| {name} | {value:.2f} | {wanted} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
