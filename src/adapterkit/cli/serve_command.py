"""`adapterkit serve`: argument wiring for adapterkit.serve (an OpenAI-compatible server)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="smollm2", help="base model: 'smollm2' (default), a local folder, or a hub id")
    parser.add_argument("--served-model-name", help="the base's name in requests and /v1/models "
                                                    "(default: 'smollm2', the folder's name, or the hub id)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="load the PEFT adapter folder PATH as NAME before the port opens (repeatable)")
    parser.add_argument("--store", nargs="?", const="", default=None, metavar="ROOT",
                        help="serve store refs (name, name@3, name@prod) on first request, from ROOT "
                             "(default root: $ADAPTERKIT_HOME/store or ~/.cache/adapterkit/store)")
    parser.add_argument("--max-loras", type=int, default=32, help="adapters loaded at once; LRU eviction beyond (default 32)")
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    parser.add_argument("--max-model-len", type=int, default=1024,
                        help="prompt + completion tokens per sequence; sizes the KV cache (default 1024)")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting sequences before 429 (default 256)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (the admin endpoints are off without it)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weights, adapters and KV cache (default float32; bfloat16 halves memory)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds SIGINT/SIGTERM waits for requests in flight (default 120)")
    parser.add_argument("--replicas", type=int, metavar="N",
                        help="run N replicas behind Ray Serve, each adapter's requests routed to a replica holding it "
                             "(a local Ray cluster, or the one at $RAY_ADDRESS; pip install 'adapterkit[ray]'). "
                             "--max-loras, --drain-timeout and --log-level do not apply: Ray Serve evicts and drains")
    parser.add_argument("--max-adapters-per-replica", type=int, default=8, metavar="K",
                        help="with --replicas: store refs one replica keeps loaded (Ray's multiplexing LRU; default 8)")
    parser.add_argument("--replica-cpus", type=float, default=1.0,
                        help="with --replicas: Ray CPUs reserved per replica (default 1; a fraction packs more per host)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="uvicorn's log level (default warning; info logs every request)")


def parse_adapters(items: list[str]) -> dict[str, str | Path]:
    adapters: dict[str, str | Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--adapter {item!r}: write NAME=PATH, e.g. --adapter reverse=out/reverse")
        if name in adapters:
            raise ValueError(f"--adapter {name!r} is given twice; give each adapter one name")
        if not Path(path).expanduser().is_dir():
            raise ValueError(f"--adapter {name}={path}: no such folder; pass a PEFT adapter folder")
        adapters[name.strip()] = str(Path(path).expanduser())
    return adapters


def run_serve(args) -> int:
    from adapterkit.serve.config import ServeConfig, served_name

    adapters = parse_adapters(args.adapter)  # bad options fail before torch is even imported
    if args.replicas is not None:
        return _run_replicas(args, adapters)
    config = ServeConfig(base_name=args.served_model_name or served_name(args.base), adapters=adapters,
                         max_loras=args.max_loras, max_batch=args.max_batch, max_model_len=args.max_model_len,
                         max_queue=args.max_queue, api_key=args.api_key, base_root=str(args.base))
    config.check()
    import uvicorn

    from adapterkit.hf import load_base
    from adapterkit.serve import ServerState, build_app
    from adapterkit.serve.errors import ServeError

    store = None
    if args.store is not None:
        from adapterkit.store import AdapterStore

        store = AdapterStore(args.store or None)
    import torch

    model, tokenizer = load_base(args.base, dtype=getattr(torch, args.dtype))
    try:
        state = ServerState(model, tokenizer, config, store)  # start-up adapters load here, before the port opens
    except ServeError as exc:
        raise RuntimeError(exc.message) from exc
    app = build_app(model, tokenizer, config, store, state=state)
    server = _draining_server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                            timeout_graceful_shutdown=args.drain_timeout), state)
    server.run()
    return 0 if server.started else 1


def _run_replicas(args, adapters: dict[str, str | Path]) -> int:
    """`--replicas N`: the same server, N times, behind Ray Serve (adapterkit.integrations.ray)."""
    import importlib.util
    import os

    from adapterkit.integrations.ray.options import RayServeOptions

    options = RayServeOptions(
        base=str(args.base), served_model_name=args.served_model_name, store=args.store,
        store_url=(os.environ.get("ADAPTERKIT_STORE_URL") or None) if args.store is not None else None,
        adapters={name: str(path) for name, path in adapters.items()}, replicas=args.replicas,
        max_adapters_per_replica=args.max_adapters_per_replica, max_batch=args.max_batch,
        max_model_len=args.max_model_len, max_queue=args.max_queue, api_key=args.api_key, dtype=args.dtype,
        replica_cpus=args.replica_cpus)
    options.check()
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("--replicas runs on Ray Serve, which is not installed: pip install 'adapterkit[ray]'")
    from adapterkit.integrations.ray.launch import serve_replicas

    return serve_replicas(options, host=args.host, port=args.port)


def _draining_server(config, state):
    """A uvicorn.Server that marks the app as draining on SIGINT/SIGTERM (new requests get 503,
    those in flight finish) and prints the address and the adapters once it listens."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            state.begin_drain()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                names = [a["id"] for a in state.adapters.listing()]
                print(f"adapterkit serve: listening on http://{host}:{port} (OpenAI API under /v1); "
                      f"base {state.config.base_name!r}; adapters: {', '.join(names) or 'none'}"
                      f"{'; store refs on demand' if state.store is not None else ''}", flush=True)

    return DrainingServer(config)
