"""`adapterkit serve --replicas N`: start a local Ray cluster (or join RAY_ADDRESS's), deploy
N replicas behind the OpenAI API, and serve until SIGINT / SIGTERM.

A cluster started here is a quiet one: no dashboard, no usage stats, worker logs kept in
Ray's session folder rather than on this terminal. Leaving, it deletes its application (Ray
Serve lets the requests in flight finish first) and, if it started the cluster, stops it.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading

from adapterkit.integrations.ray.options import RayServeOptions

# Set before Ray is imported: no usage report leaves this machine.
QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0"}
# For a cluster started here (its daemons inherit them; the user's own values win): Serve's controller
# gives its HTTP proxy 3 readiness checks of 5 s and then kills it, and on a loaded machine `serve.start`
# failed with ActorDiedError. Bounds, not paces.
LOCAL_CLUSTER_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
                          "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


def connect_ray(num_cpus: int | None = None, temp_dir: str | None = None) -> bool:
    """Join the cluster at $RAY_ADDRESS, or start a local one; True if it was started here."""
    for key, value in QUIET_RAY.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    for key, value in LOCAL_CLUSTER_DEFAULTS.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    return True


def serve_replicas(options: RayServeOptions, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Deploy `options` and serve on host:port until SIGINT or SIGTERM; returns the exit status."""
    options.check()  # before Ray starts anything
    started = connect_ray()
    from ray import serve

    from adapterkit.integrations.ray.deployment import build_application

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _check_room(options)
        port = port or _free_port(host)
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_application(options), name=options.app_name, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # Serve says "failed to update the deployments"; the replicas' error says why
            raise RuntimeError(f"{exc} {_deployment_error(options.app_name)}".strip()) from None
        import ray

        host, port = _http_address(host, port)
        cluster = ray.get_runtime_context().gcs_address
        print(f"adapterkit serve: listening on http://{host}:{port} (OpenAI API under /v1); base "
              f"{options.base_name!r}; {options.replicas} replicas on Ray Serve "
              f"({'a local Ray cluster' if started else 'the Ray cluster'} at {cluster}); adapters: "
              f"{', '.join(options.adapters) or 'none'}{'; store refs on demand' if options.store is not None else ''}",
              flush=True)
        stop.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _leave(options.app_name, started)


def _check_room(options: RayServeOptions) -> None:
    """Refuse a deployment the cluster can never place (Serve would wait for CPUs forever)."""
    import ray

    from adapterkit.errors import RayServeOptionError

    cpus = ray.cluster_resources().get("CPU", 0)
    needed = options.replicas * options.replica_cpus
    if needed > cpus:
        raise RayServeOptionError(
            f"{options.replicas} replicas x {options.replica_cpus:g} CPU need {needed:g} CPUs, but the Ray cluster has "
            f"{cpus:g}; pass --replica-cpus {math.floor(cpus / options.replicas * 100) / 100:g} or fewer --replicas")


def _deployment_error(app_name: str) -> str:
    """The last line of the error a failed deployment's replicas raised (their constructor's), if Serve kept it."""
    from ray import serve

    try:
        deployments = serve.status().applications[app_name].deployments
    except Exception:  # noqa: BLE001 - the message is a courtesy
        return ""
    messages = [d.message.strip().splitlines()[-1] for d in deployments.values() if d.message.strip()]
    return "; ".join(dict.fromkeys(messages))


def _http_address(host: str, port: int) -> tuple[str, int]:
    """Where Serve's HTTP proxy listens. Asked, not assumed: on a cluster whose Serve already runs,
    `serve.start` keeps the proxy's address and ignores ours. (Serve's client object is internal; if
    it changes, the address asked for is what we can say.)"""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config  # type: ignore[union-attr]
        return config.host, config.port
    except Exception:  # noqa: BLE001 - only the printed address depends on it
        return host, port


def _leave(app_name: str, started: bool) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if started:
            serve.shutdown()
        else:
            serve.delete(app_name)  # the cluster and its other applications stay
    finally:
        ray.shutdown()  # stops a cluster started here; only disconnects from a joined one


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
