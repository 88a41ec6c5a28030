"""Ray Serve replicas: how often a request finds its adapter already loaded, and how long a killed
replica takes to come back.

Starts a local Ray cluster (no dashboard), deploys `--replicas` replicas of `adapterkit serve` on
`--base` with `--adapters` random rank-8 adapters in a fresh store, `--per-replica` kept per replica,
then:

  startup   seconds for ray.init, and for the deployment to serve (replicas load the base);
  hit rate  after one warm-up request per adapter, `--requests` requests spread over the adapters,
            from the replicas' own counters (hits / requests, loads, evictions);
  replace   SIGKILL an idle replica (its pid from its counters); seconds until Ray Serve has a new
            replica serving (its counters answer and a request for the base succeeds there).

    .venv/bin/python -m bench.ray_serve [--base smollm2] [--replicas 2] [--adapters 4] [--requests 200]

Writes bench/results/ray_serve.json. Timings on a shared machine are noisy; read them as orders of size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--per-replica", type=int, default=2, help="max_adapters_per_replica")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--replica-cpus", type=float, default=0.5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import httpx
    import ray
    from ray import serve

    from adapterkit.integrations.ray import RayServeOptions, build_application, replica_counters

    work = Path(tempfile.mkdtemp(prefix="akray-bench-"))
    store_root, names = _fill_store(args.base, work / "store", args.adapters)
    result: dict = {"base": args.base, "replicas": args.replicas, "adapters": args.adapters,
                    "per_replica": args.per_replica}
    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"))
    result["ray_init_s"] = time.monotonic() - started
    try:
        port = _free_port()
        started = time.monotonic()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = RayServeOptions(base=args.base, store=str(store_root), replicas=args.replicas,
                                  max_adapters_per_replica=args.per_replica, replica_cpus=args.replica_cpus,
                                  max_model_len=256)
        serve.run(build_application(options), name=options.app_name, route_prefix="/")
        result["deploy_s"] = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/v1/completions"
        client = httpx.Client(timeout=120)

        def ask(model: str) -> None:
            reply = client.post(url, json={"model": model, "prompt": "red green blue", "max_tokens": 2,
                                           "temperature": 0})
            reply.raise_for_status()

        for name in names:  # warm-up, one at a time so each load reaches the routers before the next
            ask(name)
            time.sleep(0.3)
        before = _totals(replica_counters(options.app_name))
        for i in range(args.requests):
            ask(names[i % len(names)])
        after = _totals(replica_counters(options.app_name))
        delta = {k: after[k] - before[k] for k in after}
        result.update(requests=delta["requests"], hits=delta["hits"], hit_rate=delta["hits"] / delta["requests"],
                      loads=delta["loads"], evictions=delta["evictions"])
        victim = replica_counters(options.app_name)[0]
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:
            serving = [c for c in replica_counters(options.app_name) if c["replica"] != victim["replica"]]
            if len(serving) == args.replicas:
                break
            time.sleep(0.1)
        ask(options.base_name)
        result["replace_s"] = time.monotonic() - killed
    finally:
        serve.shutdown()
        ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _fill_store(base: str, root: Path, count: int) -> tuple[Path, list[str]]:
    import torch

    from adapterkit import AdapterStore, LoraConfig, get_peft_model
    from adapterkit.hf import load_base

    model, _ = load_base(base)
    store = AdapterStore(root)
    names = []
    for i in range(count):
        name = f"bench{i:02d}"
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        if i == 0:
            model = get_peft_model(model, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        model.set_adapter(name)  # its factors are the trainable parameters now
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, param in sorted(model.named_parameters()):
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        store.put(model, name, adapter_name=name, tags=["prod"])
        names.append(f"{name}@prod")
    return root, names


def _totals(counters: list[dict]) -> dict[str, int]:
    return {k: sum(c[k] for c in counters) for k in ("requests", "hits", "loads", "evictions")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
