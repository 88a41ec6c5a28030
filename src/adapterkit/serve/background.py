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
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 60.0,
                 log_level: str = "warning", graceful_shutdown_s: int = 10) -> None:
        import uvicorn

        self.app = app
        self.host = host
        # The listening socket is bound here and handed to uvicorn: a port picked first and bound later
        # can be taken by another connection meanwhile on a busy machine. port 0: any free one.
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own bind does
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                                    timeout_graceful_shutdown=graceful_shutdown_s))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="adapterkit-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()  # uvicorn closed its listener; this closes our handle too
