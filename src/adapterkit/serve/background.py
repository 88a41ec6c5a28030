"""BackgroundServer: serve an app with uvicorn on 127.0.0.1 from a thread, for a block of code.

For embedding (the demo, notebooks) and tests: the server is real (sockets, HTTP,
the app's lifespan), but lives inside the caller's process and stops at the end of
the `with` block. No signal handlers are installed (uvicorn skips them off the main
thread); `adapterkit serve` is the way to run a server on its own.
"""

from __future__ import annotations

import socket
import threading
import time


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 60.0) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port or _free_port(host)
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, name="adapterkit-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
