"""The playground: a web page on the server to compare adapters side by side and browse the store.

`GET /` serves static/index.html. The page is plain HTML, CSS and JS shipped in the
package (no CDN, no build step), so it works offline. It talks to the server through
the same public API any client uses (`/v1/models`, `/v1/chat/completions`, the admin
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`) plus two read-only endpoints
of its own:

- `GET /playground/info`: what the page needs before the user types a key (the base's
  name, whether a store is attached, whether the server wants a key);
- `GET /playground/store?name=&base=`: every stored version, grouped by adapter name,
  with its tags, base, rank, targets, bytes and sha256, and where it is loaded. It needs
  the API key whenever the inference endpoints do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from adapterkit.serve.adapters import STORE_PATH_PREFIX
from adapterkit.serve.errors import BadRequestError, StoreNotConfiguredError

STATIC_DIR = Path(__file__).parent / "static"
_MAX_FILTER_CHARS = 200
_GLOB_CHARS = "*?["


def add_playground(app: FastAPI, state, check_key: Callable) -> None:
    """Mount the page, its static files and its two endpoints on `app`.

    `check_key(state, request, admin=...)` is the app's own key check, so the store
    listing is guarded exactly as the inference endpoints are.
    """
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page():
        # no-cache: after an upgrade the browser must not keep an old page against a new API.
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/playground/info")
    async def info():
        return {"base": state.config.base_name, "store": state.store is not None,
                # The admin endpoints always need the key; with one set, every endpoint does.
                "api_key_required": state.config.api_key is not None,
                "max_model_len": state.config.max_model_len}

    @router.get("/playground/store")
    async def store(request: Request, name: str = "", base: str = ""):
        check_key(state, request, admin=False)
        if state.store is None:
            raise StoreNotConfiguredError("this server has no adapter store; start it with --store [ROOT] to browse one")
        loaded = _loaded_store_refs(state.adapters.listing())
        fingerprint = getattr(getattr(state.model, "base_fingerprint", None), "digest", None)
        # SQLite reads block: keep them off the event loop that streams everyone's tokens.
        return await asyncio.to_thread(store_listing, state.store, name=name, base=base, loaded=loaded,
                                       server_fingerprint=fingerprint)

    app.include_router(router)
    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")


def store_listing(store, *, name: str = "", base: str = "", loaded: dict[str, list[str]] | None = None,
                  server_fingerprint: str | None = None) -> dict:
    """The store's versions as JSON for the page, filtered by name and base.

    `name` matches as a substring unless it holds glob characters (then as a glob, as
    `adapterkit store ls` does); `base` is a base name or a fingerprint prefix.
    `loaded` maps a version's ref (name@N) to the names it is loaded under.
    """
    name, base = _check_filter("name", name), _check_filter("base", base)
    pattern = name if any(c in name for c in _GLOB_CHARS) else (f"*{name}*" if name else None)
    loaded = loaded or {}
    adapters: dict[str, list[dict]] = {}
    for record in store.ls(pattern, base=base or None):
        adapters.setdefault(record.name, []).append(_version_json(store, record, loaded, server_fingerprint))
    return {"root": str(store.root), "server_base_fingerprint": server_fingerprint,
            "adapters": [{"name": n, "versions": versions} for n, versions in adapters.items()]}


def _version_json(store, record, loaded: dict[str, list[str]], server_fingerprint: str | None) -> dict:
    files = store.index.files(record)
    summary = record.summary
    weights = _weights_file(files)
    recorded = record.base
    return {
        "ref": record.ref,
        "version": record.version,
        "tags": sorted(record.tags),
        "created_at": record.created_at,
        "base": None if recorded is None else {"name": recorded.name, "fingerprint": recorded.fingerprint,
                                               "architecture": recorded.architecture},
        # None when the store does not know the adapter's base (an old PEFT folder).
        "base_matches_server": None if recorded is None or server_fingerprint is None
        else recorded.fingerprint == server_fingerprint,
        "method": summary.method,
        "rank": summary.rank,
        "alpha": summary.alpha,
        "targets": summary.targets,
        "parameters": summary.parameter_count,
        "bytes": sum(f.size for f in files),
        # The weights file's digest names the weights; config-only edits keep it.
        "sha256": weights.blob if weights is not None else None,
        "files": [{"path": f.path, "sha256": f.blob, "bytes": f.size} for f in files],
        "loaded_as": loaded.get(record.ref, []),
    }


def _weights_file(files):
    from adapterkit.store.summary import WEIGHTS_NAMES

    by_path = {f.path: f for f in files}
    for name in WEIGHTS_NAMES:
        if name in by_path:
            return by_path[name]
    return next((f for f in files if f.path.endswith(WEIGHTS_NAMES)), None)


def _loaded_store_refs(listing: list[dict]) -> dict[str, list[str]]:
    """ref (name@N) -> the names it serves under: a store ref a request named, or an admin load of `store:REF`."""
    loaded: dict[str, list[str]] = {}
    for adapter in listing:
        root = adapter["root"]
        if root.startswith(STORE_PATH_PREFIX):
            loaded.setdefault(root[len(STORE_PATH_PREFIX):], []).append(adapter["id"])
    return loaded


def _check_filter(param: str, value: str) -> str:
    value = value.strip()
    if len(value) > _MAX_FILTER_CHARS or any(ord(c) < 32 for c in value):
        raise BadRequestError(f"the {param} filter must be at most {_MAX_FILTER_CHARS} printable characters; "
                              "shorten it", param=param)
    return value
