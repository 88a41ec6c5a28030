"""The playground's endpoints and shipped files, without a browser (test_playground.py drives the page)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest
from serve_helpers import API_KEY, serving

from adapterkit.serve.playground import STATIC_DIR
from adapterkit.store import AdapterStore

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, adapter_dirs):
    store = AdapterStore(tmp_path_factory.mktemp("playground-api-store"), durable=False)
    for name, folder in (("alpha", "a08"), ("alpha", "a09"), ("beta", "a10")):
        store.put_folder(adapter_dirs[folder], name)
    store.tag("alpha@2", "prod")
    return store


@pytest.fixture(scope="module")
def server(base_dir, store):
    with serving(base_dir, api_key=API_KEY, store=store, max_loras=4) as server:
        yield server


def test_page_and_static_files_are_served_with_their_types(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        assert f'playground/static/{name}' in page.text
        response = httpx.get(f"{server.url}/playground/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.text == (STATIC_DIR / name).read_text()
    assert httpx.get(server.url + "/playground/static/missing.js").status_code == 404


def test_shipped_files_fetch_nothing_from_elsewhere():
    """Offline: no CDN, no remote font or script; every URL in the page is relative."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
        assert "@import" not in text and "import(" not in text, path.name


def test_package_data_ships_every_static_file():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["adapterkit.serve"]
    for path in STATIC_DIR.iterdir():
        assert any(fnmatch.fnmatch(f"static/{path.name}", g) for g in globs), f"{path.name} would not be packaged"


def test_info_is_public_and_says_a_key_is_needed(server):
    info = httpx.get(server.url + "/playground/info").json()
    assert info == {"base": "tiny", "store": True, "api_key_required": True, "max_model_len": 32}


def test_store_listing_equals_the_store(server, store):
    listing = httpx.get(server.url + "/playground/store", headers=AUTH).json()
    assert listing["root"] == str(store.root)
    assert listing["server_base_fingerprint"] == server.state.model.base_fingerprint.digest
    got = [v for a in listing["adapters"] for v in a["versions"]]
    records = store.ls()
    assert [a["name"] for a in listing["adapters"]] == ["alpha", "beta"]
    assert [v["ref"] for v in got] == [r.ref for r in records]
    for version, record in zip(got, records):
        files = store.index.files(record)
        assert version["tags"] == sorted(record.tags)
        assert version["rank"] == record.summary.rank and version["targets"] == record.summary.targets
        assert version["base"]["fingerprint"] == record.base.fingerprint and version["base_matches_server"] is True
        assert version["bytes"] == sum(f.size for f in files)
        assert version["sha256"] == next(f.blob for f in files if f.path == "adapter_model.safetensors")
        assert [f["path"] for f in version["files"]] == [f.path for f in files]
        assert version["loaded_as"] == []


def test_store_listing_shows_where_a_version_is_loaded(server):
    # a request naming a store ref loads it; an admin load of store:REF loads it under another name
    httpx.post(server.url + "/v1/completions", headers=AUTH,
               json={"model": "alpha@prod", "prompt": "w1", "max_tokens": 1}).raise_for_status()
    httpx.post(server.url + "/v1/load_lora_adapter", headers=AUTH,
               json={"lora_name": "b", "lora_path": "store:beta@1"}).raise_for_status()
    try:
        listing = httpx.get(server.url + "/playground/store", headers=AUTH).json()
        loaded = {v["ref"]: v["loaded_as"] for a in listing["adapters"] for v in a["versions"]}
        assert loaded == {"alpha@1": [], "alpha@2": ["alpha@2"], "beta@1": ["b"]}
    finally:
        for name in ("b", "alpha@2"):
            httpx.post(server.url + "/v1/unload_lora_adapter", headers=AUTH, json={"lora_name": name})


@pytest.mark.parametrize(("name", "base", "refs"), [
    ("", "", ["alpha@1", "alpha@2", "beta@1"]),
    ("lph", "", ["alpha@1", "alpha@2"]),  # a substring
    ("b*", "", ["beta@1"]),  # a glob
    ("ALPHA", "", []),  # names are case-sensitive, as in the store
    ("", "FINGERPRINT", ["alpha@1", "alpha@2", "beta@1"]),
    ("beta", "FINGERPRINT", ["beta@1"]),
    ("", "0000", []),
])
def test_store_filters(server, name, base, refs):
    if base == "FINGERPRINT":
        base = server.state.model.base_fingerprint.digest[:6]
    listing = httpx.get(server.url + "/playground/store", headers=AUTH, params={"name": name, "base": base}).json()
    assert [v["ref"] for a in listing["adapters"] for v in a["versions"]] == refs


def test_store_listing_refuses_bad_filters_and_keys(server):
    bad = [chr(c) for c in range(32)] + ["x" * 201]
    for value in bad:
        for param in ("name", "base"):
            response = httpx.get(server.url + "/playground/store", headers=AUTH, params={param: f"a{value}b"})
            assert response.status_code == 400, (param, value)
            error = response.json()["error"]
            assert error["param"] == param and "printable" in error["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(server.url + "/playground/store", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_admin_load_of_a_store_ref_that_does_not_resolve(server, base_dir):
    for path in ("store:nobody", "store:alpha@7", "store:alpha@nope", "store:"):
        response = httpx.post(server.url + "/v1/load_lora_adapter", headers=AUTH, json={"lora_name": "z", "lora_path": path})
        assert response.status_code in (400, 404), (path, response.text)
        assert "z" not in {m["id"] for m in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]}
    with serving(base_dir, api_key=API_KEY) as storeless:
        response = httpx.post(storeless.url + "/v1/load_lora_adapter", headers=AUTH,
                              json={"lora_name": "z", "lora_path": "store:alpha@1"})
        assert response.status_code == 400 and "--store" in response.json()["error"]["message"]
        missing = httpx.get(storeless.url + "/playground/store", headers=AUTH)
        assert missing.status_code == 404 and "--store" in missing.json()["error"]["message"]
        assert missing.json()["error"]["code"] == "store_not_configured"
