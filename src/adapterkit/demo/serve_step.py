"""The demo's last step: serve the two adapters over HTTP and ask them through the openai client.

The server is real (uvicorn on 127.0.0.1, the OpenAI API) and lives for this step
only; the replies must equal the in-process replies of step 6.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adapterkit.demo.console import say, table


def serve_and_ask(base: str, adapters: dict[str, Path], asks: list[tuple[str, list[dict], str]]) -> bool | None:
    """Start a server on `adapters`, send each (model, messages, expected reply) concurrently,
    print the replies, stop the server. Returns whether every reply was the expected one
    (None when the openai client is not installed)."""
    try:
        import openai
    except ImportError:
        say("skipped: the openai client is not installed (pip install openai)")
        return None
    from adapterkit.hf import load_base
    from adapterkit.serve import ServeConfig, build_app
    from adapterkit.serve.background import BackgroundServer

    model, tokenizer = load_base(base)
    app = build_app(model, tokenizer, ServeConfig(base_name=base, adapters=dict(adapters), max_batch=8,
                                                  max_model_len=512))
    with BackgroundServer(app) as server:
        say(f"adapterkit serve listening on {server.url} with adapters {', '.join(adapters)} "
            f"(the same as: adapterkit serve --base {base} " + " ".join(f"--adapter {n}={p}" for n, p in adapters.items())
            + ")")
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
            def ask(item):
                name, messages, _ = item
                reply = client.chat.completions.create(model=name, messages=messages, max_tokens=16, temperature=0)
                return (reply.choices[0].message.content or "").strip()

            with ThreadPoolExecutor(len(asks)) as pool:  # concurrent: they share the server's batches
                replies = list(pool.map(ask, asks))
    say("server stopped")
    same = [reply == expected for reply, (_, _, expected) in zip(replies, asks)]
    table("concurrent requests through the openai client", ["model", "prompt", "server reply", "in-process reply", "same"],
          [[name, messages[-1]["content"], reply, expected, "yes" if ok else "NO"]
           for (name, messages, expected), reply, ok in zip(asks, replies, same)])
    return all(same)
