"""`adapterkit serve --replicas 2` on a local Ray cluster (2 CPUs, no dashboard), on the tiny base with
adapters in a store: the README's commands as written, the single server's answers, Ray's multiplexing
measured from the replicas' own counters, and a replica killed while it loads an adapter.

One cluster and one deployment for the module (starting them is most of the time): this process starts
a local Ray cluster (2 CPUs, no dashboard, its files in a temporary folder); the README's
`adapterkit serve --replicas 2` line, run as a subprocess, joins it through RAY_ADDRESS and deploys, while
this process fills the store (replicas resolve refs on demand); the README's `serve run` line starts once
that deployment serves (a second application on the same cluster) and is checked last. At the end nothing
of the cluster may be left running.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import free_port, missing_tool, save_random_adapters, save_tiny_base
from readme_commands import readme_commands, substitute

# A Ray cluster, Serve, 2 + 1 replicas, 2 ingresses and a replacement: ~50 s of CPU in all (80 s of wall time
# measured on 2 cores shared with other jobs at load 8-14).
pytestmark = pytest.mark.slow

ADAPTERS = [f"a{i:02d}" for i in range(7)]
WARM = ADAPTERS[:4]  # the hit-rate test's adapters: 2 per replica (--max-adapters-per-replica 2)
GATED = ADAPTERS[4]  # its store blob is a FIFO the kill test holds shut
SLOW = ADAPTERS[6]  # ... and this one's, past the second application's request_timeout_s
MAX_MODEL_LEN = 32
SECOND_TIMEOUT_S = 3  # the `serve run` application's request_timeout_s
REPLICA_OPTIONS = ["--max-model-len", str(MAX_MODEL_LEN), "--replica-cpus", "0.5", "--max-adapters-per-replica", "2"]


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        missing_tool("Ray Serve is not installed (pip install 'adapterkit[ray]'; make installs it)", module_level=True)
    return ray, serve


class Deployment:
    def __init__(self, url: str, store_root: Path, adapter_dirs: dict, base_dir: Path, cluster: str) -> None:
        self.url, self.store_root, self.adapter_dirs, self.base_dir = url, store_root, adapter_dirs, base_dir
        self.cluster = cluster  # the Ray cluster's (GCS) address
        self.serve_run: subprocess.Popen | None = None

    def start_serve_run(self, log: Path) -> None:
        """The README's `serve run` line, against this cluster, as a second application ("second", under
        /second, 1 replica) beside the first; `--non-blocking` ends the command once it serves."""
        _, _, serve_run = readme_commands("scaling-out:ray")
        argv = substitute(serve_run, {"store=/shared/adapters": f"store={self.store_root}",
                                      "base=smollm2": f"base={self.base_dir}", "replicas=2": "replicas=1"})
        argv += ["served_model_name=smollm2", f"max_model_len={MAX_MODEL_LEN}", "replica_cpus=0.25",
                 f"request_timeout_s={SECOND_TIMEOUT_S}", "app_name=second", "--name", "second", "--route-prefix", "/second", "--non-blocking",
                 "--address", self.cluster]
        self.serve_run_log = log
        with open(log, "w") as out:
            self.serve_run = subprocess.Popen([str(Path(sys.executable).with_name("serve")), *argv[1:]], stdout=out,
                                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def client(self, timeout: float = 60.0):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="unused", timeout=timeout, max_retries=0)


@pytest.fixture(scope="module")
def cluster():
    """This process's Ray cluster: 2 CPUs, no dashboard, its files in a temporary folder; yields its address."""
    ray, serve = _ray()
    environment = pytest.MonkeyPatch()
    environment.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # The proxy bounds `adapterkit serve --replicas` gives a cluster it starts (the daemons and workers of
    # this one inherit them): Serve's default 3 x 5 s readiness checks killed the proxy on a loaded machine.
    from adapterkit.integrations.ray.launch import LOCAL_CLUSTER_DEFAULTS

    for key, value in LOCAL_CLUSTER_DEFAULTS.items():
        environment.setenv(key, value)
    # ray.init sets RAY_AUTH_MODE=token here (Ray 2.60's default for a new local cluster): the commands this
    # module runs inherit it and join with the token in ~/.ray/auth_token. Restored at the end.
    if "RAY_AUTH_MODE" in os.environ:
        environment.setenv("RAY_AUTH_MODE", os.environ["RAY_AUTH_MODE"])
    else:
        environment.delenv("RAY_AUTH_MODE", raising=False)  # undo() removes what ray.init sets
    temp = tempfile.mkdtemp(prefix="akray-")  # short: Ray's socket paths must fit in 107 bytes
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp)
    print(f"\nray.init: {time.monotonic() - started:.1f} s")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        import psutil

        stopping = time.monotonic()
        cluster_processes = psutil.Process().children(recursive=True)  # Ray's daemons and their workers
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        # nothing of the cluster is left running
        _wait_until(lambda: not any(_alive(p) for p in cluster_processes), 60)
        assert not _processes_under(temp)
        print(f"serve.shutdown, ray.shutdown: {time.monotonic() - stopping:.1f} s")
        shutil.rmtree(temp, ignore_errors=True)
        environment.undo()


@pytest.fixture(scope="module")
def deployment(cluster, tmp_path_factory):
    """The README's `adapterkit serve --replicas 2` and `adapterkit store put` lines, on the tiny base."""
    root = tmp_path_factory.mktemp("ray-serve")
    base_dir = save_tiny_base(root / "base")
    store_root = root / "store"
    put, serve_line, _ = readme_commands("scaling-out:ray")
    port = free_port()  # below the ephemeral range: no connection is handed it before the command binds it
    argv = substitute(serve_line, {"/shared/adapters": str(store_root), "smollm2": str(base_dir), "8000": str(port)})
    argv += ["--served-model-name", "smollm2", *REPLICA_OPTIONS]
    env = {**os.environ, "RAY_ADDRESS": cluster, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    log = root / "serve-replicas.stderr"  # Ray's and the command's messages: the tail is shown if it fails
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "adapterkit.cli.main", *argv[1:]], stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, env=env)
    deployed = None
    try:
        from adapterkit.cli.main import main

        adapter_dirs = save_random_adapters(base_dir, root / "adapters", len(ADAPTERS), varied=False)  # while the replicas start
        for name, folder in adapter_dirs.items():
            argv = substitute(put, {"/shared/adapters": str(store_root), "out/reverse": str(folder), "reverse": name})
            assert main(argv[1:]) == 0
        try:
            line = _line_starting(process, "adapterkit serve:", timeout_s=300)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; its stderr ends:\n{log.read_text()[-3000:]}") from None
        assert f"127.0.0.1:{port}" in line and f"2 replicas on Ray Serve (the Ray cluster at {cluster})" in line, line
        print(f"adapterkit serve --replicas 2: serving {time.monotonic() - started:.1f} s after the command")
        deployed = Deployment(f"http://127.0.0.1:{port}", store_root, adapter_dirs, base_dir, cluster)
        deployed.start_serve_run(root / "serve-run.log")  # checked by the last test; deploys meanwhile
        yield deployed
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        print(f"SIGTERM to exit (application deleted): {time.monotonic() - stopping:.1f} s")
    finally:
        for child in (process, deployed and deployed.serve_run):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(30)


@pytest.fixture(scope="module")
def single_server(deployment):
    """The single `adapterkit serve` app on the same base and store, in this process."""
    from adapterkit.hf import load_base
    from adapterkit.serve import ServeConfig, build_app
    from adapterkit.serve.background import BackgroundServer
    from adapterkit.store import AdapterStore

    model, tokenizer = load_base(deployment.base_dir)
    config = ServeConfig(base_name="smollm2", max_model_len=MAX_MODEL_LEN)
    with BackgroundServer(build_app(model, tokenizer, config, store=AdapterStore(deployment.store_root))) as server:
        yield server.url


def test_replicas_answer_as_the_single_server(deployment, single_server):
    """Greedy chat and completions (plain and streamed) through Ray equal `adapterkit serve`'s, token for token."""
    from openai import OpenAI

    single = OpenAI(base_url=single_server + "/v1", api_key="unused", timeout=60, max_retries=0)
    replicated = deployment.client()
    both = (single, replicated)
    for model in ["smollm2", *(f"{name}@prod" for name in ADAPTERS[:3])]:
        chat = [c.chat.completions.create(model=model, messages=[{"role": "user", "content": "w3 w4 w5"}],
                                          max_tokens=8, temperature=0) for c in both]
        assert [chat[0].choices[0].message.content, chat[0].usage.completion_tokens] == \
               [chat[1].choices[0].message.content, chat[1].usage.completion_tokens], model
        plain = [c.completions.create(model=model, prompt="w7 w8", max_tokens=6, temperature=0) for c in both]
        assert plain[0].choices[0].text == plain[1].choices[0].text and plain[0].choices[0].text, model
        streamed = ["".join(chunk.choices[0].text for chunk in
                            c.completions.create(model=model, prompt="w7 w8", max_tokens=6, temperature=0, stream=True)
                            if chunk.choices) for c in both]
        assert streamed[0] == streamed[1] == plain[0].choices[0].text, model
    merged = {"ids": [f"{ADAPTERS[0]}@prod", f"{ADAPTERS[1]}@prod"], "weights": [0.7, 0.3], "merge_strategy": "ties",
              "density": 0.5}  # a per-request combination: model is the base, any replica builds it
    combined = [c.completions.create(model="smollm2", prompt="w7 w8", max_tokens=6, temperature=0,
                                     extra_body={"merged_adapters": merged}).choices[0].text for c in both]
    assert combined[0] == combined[1] and combined[0]
    models = {m.id for m in replicated.models.list()}
    assert "smollm2" in models
    import httpx

    refused = httpx.post(deployment.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_disabled"  # one replica of 2
    with pytest.raises(Exception) as missing:
        replicated.completions.create(model="nothing@prod", prompt="w1", max_tokens=2)
    assert getattr(missing.value, "status_code", None) == 404 and "nothing@prod" in str(missing.value)


def test_after_warm_up_requests_land_where_their_adapter_is(deployment):
    """4 adapters, 2 replicas holding 2 each: after one warm-up request per adapter, at least 90% of
    requests find their adapter already loaded, by the replicas' own counters (routing that ignored the
    adapter would find it about half the time, and evict on every miss)."""
    from adapterkit.integrations.ray import replica_counters

    client = deployment.client()
    # Warm-up: rounds of one request per adapter, until a round loads nothing (at most 60 s: a loaded
    # machine needs more rounds). Requests go one at a time, a moment apart: a replica pushes the ids it
    # holds to the routers every 0.1 s.
    deadline = time.monotonic() + 60
    while True:
        loads = _totals(replica_counters("adapterkit"))["loads"]
        for name in WARM:
            client.completions.create(model=f"{name}@prod", prompt="w1 w2", max_tokens=1, temperature=0)
            time.sleep(0.2)
        if _totals(replica_counters("adapterkit"))["loads"] == loads or time.monotonic() > deadline:
            break
    before = _totals(replica_counters("adapterkit"))
    requests = [f"{name}@prod" for _ in range(8) for name in WARM]
    for model in requests:
        client.completions.create(model=model, prompt="w1 w2", max_tokens=2, temperature=0)
    after = _totals(replica_counters("adapterkit"))
    delta = {k: after[k] - before[k] for k in after}
    hit_rate = delta["hits"] / delta["requests"]
    print(f"\nhit rate after warm-up: {delta['hits']}/{delta['requests']} = {hit_rate:.0%}; "
          f"loads {delta['loads']}, evictions {delta['evictions']}")
    assert delta["requests"] == len(requests)
    assert hit_rate >= 0.9, delta


def test_more_adapters_than_slots_evict_and_answers_stay_right(deployment, single_server):
    """5 adapters over 2 replicas x 2 slots: serve.multiplexed evicts (counted), and every answer, before and
    after its adapter was evicted and loaded again, is the single server's."""
    from openai import OpenAI

    from adapterkit.integrations.ray import replica_counters

    single = OpenAI(base_url=single_server + "/v1", api_key="unused", timeout=60, max_retries=0)
    before = _totals(replica_counters("adapterkit"))
    for model in [f"{name}@prod" for name in (ADAPTERS[5], *WARM, ADAPTERS[5])]:
        answers = [c.completions.create(model=model, prompt="w9 w10", max_tokens=4, temperature=0).choices[0].text
                   for c in (single, deployment.client())]
        assert answers[0] == answers[1], model
    after = _totals(replica_counters("adapterkit"))
    assert after["evictions"] > before["evictions"] and after["loads"] > before["loads"], (before, after)
    assert all(len(c["held"]) <= 2 for c in replica_counters("adapterkit"))


def test_a_replica_killed_while_loading_fails_only_its_requests_and_is_replaced(deployment, single_server):
    """The gated adapter's blob is a FIFO: the replica that loads it blocks reading it. Killed there, its
    request gets a 503 within seconds, the other replica keeps serving, and a replacement comes up and serves."""
    from openai import APIStatusError, OpenAI

    from adapterkit.integrations.ray import replica_counters

    outcome: dict = {}

    def gated_request() -> None:
        started = time.monotonic()
        try:
            deployment.client().completions.create(model=f"{GATED}@prod", prompt="w1", max_tokens=2)
            outcome["error"] = None
        except APIStatusError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    with _gated(deployment.store_root, f"{GATED}@prod") as blob:
        requester = threading.Thread(target=gated_request)
        requester.start()
        writer = _open_when_read(blob, timeout_s=120)  # a replica is now inside the load, blocked on the read
        try:
            (loading,) = [c for c in replica_counters("adapterkit") if f"{GATED}@prod" in c["loading"]]
            survivor = next(c for c in replica_counters("adapterkit") if c["replica"] != loading["replica"])
            killed_at = time.monotonic()
            os.kill(loading["pid"], signal.SIGKILL)
            requester.join(60)
            assert not requester.is_alive(), "the request in flight on the killed replica hangs"
            assert outcome["error"] is not None and outcome["error"].status_code == 503, outcome
            assert json.loads(outcome["error"].response.text)["error"]["code"] == "replica_unavailable"
            print(f"\nrequest in flight on the killed replica: 503 after {time.monotonic() - killed_at:.1f} s")
            held = survivor["held"][0] if survivor["held"] else "smollm2"
            reply = deployment.client().completions.create(model=held, prompt="w1 w2", max_tokens=2, temperature=0)
            assert reply.choices[0].text is not None  # the other replica kept serving
        finally:
            os.close(writer)  # EOF for a reader still there

    def replaced() -> bool:
        replicas = replica_counters("adapterkit")
        return len(replicas) == 2 and loading["replica"] not in {c["replica"] for c in replicas}

    _wait_until(replaced, 120)
    print(f"replica replaced and serving: {time.monotonic() - killed_at:.1f} s after the kill")
    single = OpenAI(base_url=single_server + "/v1", api_key="unused", timeout=60, max_retries=0)
    for model in (f"{GATED}@prod", f"{ADAPTERS[5]}@prod", "smollm2"):
        answers = [c.completions.create(model=model, prompt="w5 w6", max_tokens=4, temperature=0).choices[0].text
                   for c in (single, deployment.client())]
        assert answers[0] == answers[1], model


def test_readme_serve_run_line_deploys_the_same_application(deployment):
    """The README's `serve run` line (started by the fixture, against this cluster) serves a second
    application beside the first, with the same answers; there a replica that stays silent past
    request_timeout_s (blocked loading an adapter) gives a 504, and goes on serving."""
    try:
        status = deployment.serve_run.wait(300)
    finally:
        if deployment.serve_run.poll() is None:
            deployment.serve_run.kill()
    assert status == 0, deployment.serve_run_log.read_text()[-3000:]
    from openai import OpenAI

    client = OpenAI(base_url=deployment.url + "/second/v1", api_key="unused", timeout=60, max_retries=0)
    reply = client.completions.create(model=f"{ADAPTERS[0]}@prod", prompt="w7 w8", max_tokens=6, temperature=0)
    expected = deployment.client().completions.create(model=f"{ADAPTERS[0]}@prod", prompt="w7 w8", max_tokens=6,
                                                      temperature=0)
    assert reply.choices[0].text == expected.choices[0].text  # the cluster's serve.shutdown removes it
    from openai import APIStatusError

    with _gated(deployment.store_root, f"{SLOW}@prod") as blob:
        started = time.monotonic()
        with pytest.raises(APIStatusError) as late:
            client.completions.create(model=f"{SLOW}@prod", prompt="w1", max_tokens=2)
        waited = time.monotonic() - started
        os.close(_open_when_read(blob, timeout_s=60))  # EOF: that load fails (a corrupt file) and the replica goes on
    assert late.value.status_code == 504, late.value
    assert json.loads(late.value.response.text)["error"]["code"] == "replica_timeout"
    assert SECOND_TIMEOUT_S <= waited < SECOND_TIMEOUT_S + 20, waited
    again = client.completions.create(model=f"{ADAPTERS[0]}@prod", prompt="w7 w8", max_tokens=6, temperature=0)
    assert again.choices[0].text == expected.choices[0].text


# --- helpers ----------------------------------------------------------------------------
def _totals(counters: list[dict]) -> dict[str, int]:
    return {k: sum(c[k] for c in counters) for k in ("requests", "hits", "loads", "evictions")}


@contextlib.contextmanager
def _gated(store_root: Path, ref: str):
    """Replace the weights blob of stored version `ref` by a FIFO, for the block: a replica loading it
    blocks in the read until the FIFO's write end opens and closes (EOF: a corrupt file, refused). The
    blob is put back at the end, whatever happened."""
    from adapterkit.store import AdapterStore

    store = AdapterStore(store_root)
    (weights,) = [f for f in store.index.files(store.resolve(ref)) if f.path.endswith(".safetensors")]
    blob = store.blobs.path(weights.blob)
    original = blob.read_bytes()
    blob.unlink()
    os.mkfifo(blob)
    try:
        yield blob
    finally:
        blob.unlink()
        blob.write_bytes(original)


def _open_when_read(fifo: Path, timeout_s: float) -> int:
    """Open the FIFO's write end once a reader has opened it (ENXIO until then); the reader then blocks
    in read() for as long as this end stays open with nothing written."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout_s} s"
        time.sleep(0.1)


def _line_starting(process: subprocess.Popen, prefix: str, timeout_s: float) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith(prefix):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert found, f"no line starting {prefix!r} within {timeout_s} s (exit status {process.poll()})"
    return found[0]


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _processes_under(folder: str) -> list[int]:
    """Processes whose command line names `folder` (Ray's processes name their session folder)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(folder in part for part in process.info["cmdline"] or ()):
                found.append(process.info["pid"])
    return found

