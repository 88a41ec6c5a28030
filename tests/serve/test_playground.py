"""The playground page in a real headless Chromium against a real server on 127.0.0.1.

Driven through Playwright's Python API with the system's Chromium (`executable_path`), never a
downloaded browser. Playwright rather than Selenium: Selenium 4.52 cannot be installed here
(it needs a certifi release the package index does not have), and Playwright waits on page
state (a selector, a JS condition) without hand-written polling loops.

Oracle: every column's text equals the reply the same request gets through the official
`openai` client; the store table equals `AdapterStore.ls()`; load and unload are checked
against `/v1/models`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import struct
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from serve_helpers import API_KEY, MAX_MODEL_LEN, ServerThread, free_port, serving

from adapterkit import LoraConfig, get_peft_model
from adapterkit.store import AdapterStore
from helpers import missing_tool, randomize_adapter, tiny_llama


def _no_browser(reason: str) -> None:
    missing_tool(f"{reason}: the playground's browser tests are skipped", module_level=True)


try:
    import playwright.sync_api as playwright_api
except ImportError:
    _no_browser("Playwright is not installed (pip install -e '.[test]')")

CHROMIUM = os.environ.get("ADAPTERKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    _no_browser("no Chromium browser found (Debian: apt-get install chromium; or set ADAPTERKIT_CHROMIUM to its path)")

# As root, Chromium needs --no-sandbox; the others keep it from reaching the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
PROMPT = "w3 w4 w5 w6"
WAIT_MS = 20_000
pytestmark = pytest.mark.slow  # a real browser driving a real server: end to end


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, adapter_dirs):
    """alpha@1 (tag prod), alpha@2 (whose greedy reply to PROMPT is empty: it says end-of-text
    first), beta@1, and gamma@1 trained on another base."""
    store = AdapterStore(tmp_path_factory.mktemp("playground-store"), durable=False)
    store.put_folder(adapter_dirs["a05"], "alpha")
    store.put_folder(adapter_dirs["a04"], "alpha")
    store.tag("alpha@1", "prod")
    store.put_folder(adapter_dirs["a06"], "beta")
    other = get_peft_model(tiny_llama(seed=1), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    randomize_adapter(other, seed=5)
    store.put_folder(other.save_pretrained(tmp_path_factory.mktemp("other-base")), "gamma")
    return store


@pytest.fixture(scope="module")
def server(base_dir, adapter_dirs, store):
    with serving(base_dir, {n: adapter_dirs[n] for n in ("a00", "a01")}, api_key=API_KEY, store=store,
                 max_batch=8, max_loras=8) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1360, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []  # JS errors and requests that left 127.0.0.1
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("request", lambda request: None if request.url.startswith("http://127.0.0.1:")
            else page.problems.append(f"request to {request.url}"))
    yield page
    page.close()


def open_page(page, url: str, key: str | None = API_KEY) -> None:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready]")
    if key is not None:
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelectorAll('#model-options option').length > 2")


def set_compare(page, models: list[str], *, temperature: float = 0, max_tokens: int = 10, seed: int | None = 0) -> None:
    page.fill("#prompt", PROMPT)
    page.select_option("#column-count", str(len(models)))
    for i, model in enumerate(models):
        page.fill(f"#columns .column[data-index='{i}'] .model", model)
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#seed", "" if seed is None else str(seed))


def run_compare(page) -> list[dict]:
    page.click("#run")
    page.wait_for_function("[...document.querySelectorAll('#columns .column')].every("
                           "c => c.dataset.state === 'done' || c.dataset.state === 'error')")
    return page.eval_on_selector_all("#columns .column", """columns => columns.map(c => ({
        state: c.dataset.state, reply: c.querySelector('.reply').textContent,
        stats: c.querySelector('.stats').textContent,
        message: c.querySelector('.message').hidden ? '' : c.querySelector('.message').textContent}))""")


def api_reply(client, model: str, max_tokens: int) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=max_tokens, temperature=0, seed=0)
    return reply.choices[0].message.content


def notice(page) -> str:
    page.wait_for_selector("#notice:not([hidden])")
    return page.text_content("#notice")


# --- tests -----------------------------------------------------------------------------------------
def test_page_loads_from_the_server_alone(page, server, client):
    open_page(page, server.url)
    assert page.title() == "adapterkit playground"
    assert page.text_content("#base-name") == "tiny"
    assert page.text_content("#connection") == "connected"
    options = page.eval_on_selector_all("#model-options option", "os => os.map(o => o.value)")
    served = [m.id for m in client.models.list().data]
    assert options[: len(served)] == served  # base and loaded adapters first, as /v1/models lists them
    assert {"alpha", "alpha@1", "alpha@2", "alpha@prod", "beta@1"} <= set(options)
    # the stylesheet came from the package: the column grid is laid out
    assert page.eval_on_selector("#columns", "e => getComputedStyle(e).display") == "grid"
    assert page.problems == []


def test_compare_columns_equal_the_api_greedy_replies(page, server, client):
    open_page(page, server.url)
    models = ["a00", "a01", "alpha@prod", "tiny"]  # two loaded adapters, a store ref, the base
    set_compare(page, models, max_tokens=10)
    columns = run_compare(page)
    expected = [api_reply(client, m, 10) for m in models]
    assert [c["reply"] for c in columns] == expected
    assert len(set(expected)) == len(expected), "the adapters should give different replies"
    for column in columns:
        assert column["state"] == "done" and column["message"] == ""
        assert re.fullmatch(r"TTFT \d+ ms · (\d+\.\d|—) tok/s · \d+ tokens? · finish: (stop|length) · seed 0",
                            column["stats"]), column["stats"]
    _screenshot(page)
    # unticked "same seed": column i samples with seed + i, as its stats say
    page.uncheck("#same-seed")
    set_compare(page, models[:2], temperature=1.0, seed=7)
    sampled = run_compare(page)
    assert [c["stats"].rsplit("· ", 1)[1] for c in sampled] == ["seed 7", "seed 8"]
    for model, column, seed in zip(models[:2], sampled, (7, 8)):
        again = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=10, temperature=1.0, seed=seed)
        assert column["reply"] == again.choices[0].message.content
    assert page.problems == []


def test_store_table_lists_what_the_store_holds(page, server, store):
    open_page(page, server.url)
    page.wait_for_selector("#store-table tbody tr[data-ref]")
    rows = _store_rows(page)
    records = store.ls()
    assert [r["ref"] for r in rows] == [r.ref for r in records]
    for row, record in zip(rows, records):
        files = store.index.files(record)
        weights = next(f for f in files if f.path == "adapter_model.safetensors")
        assert row["name"] == record.name and row["version"] == str(record.version)
        assert row["tags"] == ", ".join(sorted(record.tags))
        assert row["base"] == f"{record.base.name or 'unnamed'} ({record.base.fingerprint})"
        assert row["rank"] == str(record.summary.rank)
        assert row["targets"] == ", ".join(record.summary.targets)
        assert row["bytes"] == str(sum(f.size for f in files))
        assert row["sha256"] == weights.blob
    fingerprint = server.state.model.base_fingerprint.digest
    assert [r["mismatch"] for r in rows] == [r.base.fingerprint != fingerprint for r in records]
    assert rows[-1]["ref"] == "gamma@1" and rows[-1]["mismatch"]

    page.fill("#filter-name", "lph")  # a substring
    _wait_store_refs(page, ["alpha@1", "alpha@2"])
    page.fill("#filter-name", "[bg]*")  # a glob, as `adapterkit store ls` takes
    _wait_store_refs(page, ["beta@1", "gamma@1"])
    page.fill("#filter-name", "")
    page.fill("#filter-base", records[-1].base.fingerprint[:10])  # the other base, by fingerprint prefix
    _wait_store_refs(page, ["gamma@1"])
    page.fill("#filter-base", fingerprint[:8])
    _wait_store_refs(page, ["alpha@1", "alpha@2", "beta@1"])
    page.fill("#filter-name", "nothing-like-this")
    _wait_store_refs(page, [])
    page.wait_for_selector("#store-message:has-text('No stored adapter matches')")
    assert page.problems == []


def test_load_and_unload_work_with_the_key_and_are_refused_without(page, server, client, adapter_dirs):
    open_page(page, server.url)
    page.fill("#api-key", "")
    page.wait_for_selector("#store-table tbody tr[data-ref='beta@1']")
    for key, expected in (("", "type the server's key above"), ("not-the-key", "check the key you typed")):
        page.fill("#api-key", key)
        page.click("#store-table tr[data-ref='beta@1'] button:has-text('Load')")
        text = notice(page)
        assert "Could not load beta@1" in text and "HTTP 401" in text and expected in text, text
        assert "beta@1" not in {m.id for m in client.models.list().data}
        page.eval_on_selector("#notice", "n => n.hidden = true")

    page.fill("#api-key", API_KEY)
    page.click("#store-table tr[data-ref='beta@1'] button:has-text('Load')")
    assert "Success" in notice(page)
    listed = {m.id: m for m in client.models.list().data}
    assert listed["beta@1"].root == "store:beta@1" and listed["beta@1"].parent == "tiny"
    page.wait_for_selector("#resident-table tr[data-name='beta@1']")
    page.wait_for_selector("#store-table tr[data-ref='beta@1'] td:nth-child(9):text-is('beta@1')")

    page.fill("#load-name", "seven")  # a folder on the server, through the form
    page.fill("#load-path", str(adapter_dirs["a07"]))
    page.click("#load-form button[type=submit]")
    page.wait_for_selector("#resident-table tr[data-name='seven']")
    assert "seven" in {m.id for m in client.models.list().data}

    page.fill("#api-key", "")
    page.click("#resident-table tr[data-name='seven'] button:has-text('Unload')")
    page.wait_for_selector("#notice:has-text('Could not unload seven')")
    assert "HTTP 401" in page.text_content("#notice")
    assert "seven" in {m.id for m in client.models.list().data}

    page.fill("#api-key", API_KEY)
    for name in ("seven", "beta@1"):
        page.click(f"#resident-table tr[data-name='{name}'] button:has-text('Unload')")
        page.wait_for_selector(f"#notice:has-text(\"'{name}' removed\")")
        page.wait_for_selector(f"#resident-table tr[data-name='{name}']", state="detached")
    assert not {"seven", "beta@1"} & {m.id for m in client.models.list().data}
    assert page.problems == []


def test_errors_read_as_sentences_never_blank_columns(page, server, client):
    open_page(page, server.url)
    set_compare(page, ["alpha@2", "no-such-adapter", "alpha@9", ""])
    columns = run_compare(page)
    assert api_reply(client, "alpha@2", 10) == ""
    assert columns[0] == {"state": "done", "reply": "", "stats": "1 token · finish: stop · seed 0",
                          "message": "The model returned an empty reply (finish reason: stop)."}
    for column, name in zip(columns[1:3], ("no-such-adapter", "alpha@9")):
        assert column["state"] == "error" and column["reply"] == ""
        assert column["message"].startswith("Not found (HTTP 404)") and name in column["message"], column
    assert columns[3]["message"].startswith("Choose a model for this column")

    page.fill("#api-key", "wrong-key")
    columns = run_compare(page)
    for column in columns[:3]:
        assert column["message"].startswith("The server refused the API key (HTTP 401)"), column
        assert "check the key you typed" in column["message"]

    page.fill("#api-key", API_KEY)
    page.fill("#max-tokens", "0")
    page.click("#run")
    assert "max tokens must be a whole number" in notice(page)
    assert page.problems == []


def test_a_server_that_dies_mid_reply_and_comes_back(page, base_dir, adapter_dirs):
    """The connection is cut mid-stream (as when the server process dies), the server stays
    down, then a new one starts on the same port: each step reads as a sentence in the page."""
    port = free_port()
    cut = threading.Event()
    with _ServerOnPort(_CutStreams(_app(base_dir, adapter_dirs), cut), port) as first:
        open_page(page, first.url, key=None)
        assert "load and unload are off" in page.text_content("#key-hint")
        page.click("#store-table tr[data-ref] button, #refresh-store")  # no store here: nothing to load
        assert "has no adapter store" in page.text_content("#store-message")
        page.fill("#load-name", "x")
        page.fill("#load-path", str(adapter_dirs["a01"]))
        page.click("#load-form button[type=submit]")
        assert "HTTP 403" in notice(page) and "--api-key" in page.text_content("#notice")

        set_compare(page, ["a00", "tiny"], max_tokens=20)
        page.click("#run")  # Stop ends both streams, and the server frees their rows
        page.wait_for_function("document.querySelector('#columns .column .reply').textContent.length > 0")
        page.click("#stop")
        page.wait_for_function("[...document.querySelectorAll('#columns .column')].every(c => c.dataset.state === 'error')")
        messages = page.eval_on_selector_all("#columns .message", "ms => ms.map(m => m.textContent)")
        assert all(re.fullmatch(r"Stopped after \d+ token\(s\)\.", m) for m in messages), messages
        _wait_until(lambda: httpx.get(first.url + "/health").json()["running"] == 0)

        page.click("#run")
        page.wait_for_function("document.querySelector('#columns .column .reply').textContent.length > 0")
        cut.set()
        page.wait_for_function("[...document.querySelectorAll('#columns .column')].every("
                               "c => c.dataset.state === 'error')")
        messages = page.eval_on_selector_all("#columns .message", "ms => ms.map(m => m.textContent)")
        assert all(m.startswith("The connection was lost after") for m in messages), messages
        partial = page.text_content("#columns .column .reply")
        assert partial and f"after {len(partial.split())} token(s)" in messages[0]  # the text so far stays
    columns = run_compare(page)  # the server is gone
    assert all(c["message"].startswith(f"Cannot reach the server at http://127.0.0.1:{port}") for c in columns), columns
    page.wait_for_selector("#connection:has-text('server unreachable')")

    with _ServerOnPort(_app(base_dir, adapter_dirs), port):
        columns = run_compare(page)
        assert [c["state"] for c in columns] == ["done", "done"] and all(c["reply"] for c in columns)
        page.wait_for_selector("#connection:has-text('connected')")
    assert page.problems == []


# --- helpers ---------------------------------------------------------------------------------------
def _app(base_dir, adapter_dirs):
    """A server without a key or a store, serving a00."""
    from adapterkit.hf import load_base
    from adapterkit.serve import ServeConfig, build_app

    model, tokenizer = load_base(base_dir)
    return build_app(model, tokenizer, ServeConfig(base_name="tiny", adapters={"a00": adapter_dirs["a00"]},
                                                   max_model_len=MAX_MODEL_LEN, max_batch=4))


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _store_rows(page) -> list[dict]:
    return page.eval_on_selector_all("#store-table tbody tr[data-ref]", """rows => rows.map(r => {
        const t = [...r.cells].map(c => c.textContent);
        return {ref: r.dataset.ref, name: t[0], version: t[1], tags: t[2], base: t[3], rank: t[4], targets: t[5],
                bytes: r.cells[6].dataset.bytes, sha256: r.cells[7].dataset.sha256, loaded: t[8],
                mismatch: r.cells[3].classList.contains('mismatch')};
    })""")


def _wait_store_refs(page, refs: list[str]) -> None:
    page.wait_for_function("refs => JSON.stringify([...document.querySelectorAll('#store-table tbody tr[data-ref]')]"
                           ".map(r => r.dataset.ref)) === JSON.stringify(refs)", arg=refs)


def _screenshot(page) -> None:
    """The README's picture; rewritten only when asked (ADAPTERKIT_UPDATE_SCREENSHOT=1), so a test run
    leaves the work tree clean."""
    png = page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1200 and height >= 600, (width, height)
    if os.environ.get("ADAPTERKIT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)


class _CutStreams:
    """ASGI wrapper: slows streamed replies (100 ms a chunk) and, once `cut` is set, breaks every
    stream in progress without its `data: [DONE]`, the two ways a dying server can: every other
    stream loses its connection mid-body, the others end their body early but cleanly."""

    def __init__(self, app, cut: threading.Event) -> None:
        self.app, self.cut = app, cut
        self.state = app.state
        self.streams = itertools.count()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        abort = next(self.streams) % 2 == 0
        ended = False

        async def cutting_send(message):
            nonlocal ended
            if ended:
                return  # the client has its truncated body; the rest goes nowhere
            if message["type"] == "http.response.body" and message.get("more_body"):
                await asyncio.sleep(0.1)
                if self.cut.is_set():
                    if abort:
                        raise ConnectionAbortedError("the test cut this stream")
                    ended = True
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, receive, cutting_send)


class _ServerOnPort(ServerThread):
    """ServerThread on a chosen port, so a second server can take over the first one's address."""

    def __init__(self, app, port: int) -> None:
        super().__init__(app)
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
