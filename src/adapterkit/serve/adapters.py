"""ResidentAdapters: which adapters the server knows, which are loaded, and leases on them.

Three kinds of names reach a request's `model` field:
- the base model's name: no adapter;
- a named adapter (given at start with --adapter NAME=PATH, or by the admin load endpoint),
  which stays addressable even when evicted: its folder is loaded again on demand;
- a store ref (`name`, `name@3`, `name@prod`), resolved to one version `name@N` per request
  and loaded on first use.

A request takes a *lease* on the adapter it runs with and returns it when it ends.
The weights it leased never change under it: a replacement loads the new weights
under a fresh internal name and retires the old ones, which are deleted from the
model only when their last lease ends (so one request never mixes old and new
weights, and unload frees memory once in-flight requests finish). LRU eviction
keeps at most `max_loras` adapters loaded and never evicts a leased one.

All bookkeeping runs on the server's event loop (one thread), so plain dicts need
no locks; the model itself is changed only through `call` (the engine thread).
Per-name asyncio locks make concurrent first requests for one adapter load it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from adapterkit.errors import AdapterError
from adapterkit.model.mixed import BASE_ROW
from adapterkit.serve.errors import AdapterLoadError, BadRequestError, ModelNotFoundError, QueueFullError, ServeError

# How long a request waits for a free adapter slot when every loaded adapter is in use.
ROOM_WAIT_S = 30.0
# A `lora_path` naming a stored version (`store:name@3`), and the `root` /v1/models shows for one.
STORE_PATH_PREFIX = "store:"


@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter's weights come from: a PEFT folder, or one store version."""

    path: Path | None = None
    store_ref: str | None = None  # name@N, resolved

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{STORE_PATH_PREFIX}{self.store_ref}"


@dataclass(eq=False)
class Resident:
    key: str  # the public name (named adapters) or name@N (store refs)
    internal: str  # its adapter name inside the model; never reused
    source: AdapterSource
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False  # replaced or unloaded: deleted once its last lease ends
    deleted: bool = False


@dataclass(eq=False)
class Lease:
    model: str  # as the request named it
    adapter: str  # the name to give the engine: an internal adapter name or BASE_ROW
    resident: Resident | None = None
    released: bool = False


@dataclass(eq=False)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


@dataclass
class AdapterStats:
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    unloads: int = 0
    load_seconds: float = 0.0  # wall time of successful loads (store read + install), summed


class ResidentAdapters:
    def __init__(self, call: Callable[[Callable], Future], *, base_name: str, max_loras: int, store=None) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {max_loras}")
        self._call = call
        self.base_name = base_name
        self.max_loras = max_loras
        self.store = store
        self.named: dict[str, AdapterSource] = {}
        self.resident: dict[str, Resident] = {}
        self.stats = AdapterStats()
        self._locks: dict[str, _KeyLock] = {}
        self._loading = 0  # slots reserved by loads in progress
        self._room = asyncio.Event()  # set (and replaced) whenever a lease ends or an adapter goes
        self._counter = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    # --- start-up (before the event loop serves anything) -------------------------------
    def load_startup(self, adapters: dict[str, str | Path]) -> None:
        """Load the --adapter NAME=PATH set, synchronously; the first failure raises (a ServeError)."""
        if len(adapters) > self.max_loras:
            raise BadRequestError(
                f"{len(adapters)} start-up adapters but --max-loras is {self.max_loras}; raise --max-loras "
                f"to at least {len(adapters)}")
        for name, path in adapters.items():
            self._check_public_name(name)
            folder = Path(path)
            source = AdapterSource(path=folder)
            internal = self._internal_name(name)
            with _load_errors(source):
                self._call(_loader(folder, internal)).result()
            self.named[name] = source
            self.resident[name] = Resident(name, internal, source)
            self.stats.loads += 1

    # --- requests -----------------------------------------------------------------------
    async def acquire(self, model: str) -> Lease:
        """A lease on the adapter `model` names, loading it if needed (404 if nothing has that name)."""
        if model == self.base_name:
            return Lease(model, BASE_ROW)
        if model in self.named:
            key, source = model, self.named[model]
        else:
            key, source = await self._resolve_store_ref(model)
        resident = await self._ensure(key, source)
        resident.leases += 1  # no await since _ensure returned: nothing can evict it in between
        resident.last_used = time.monotonic()
        return Lease(model, resident.internal, resident)

    def release(self, lease: Lease) -> None:
        if lease.released or lease.resident is None:
            lease.released = True
            return
        lease.released = True
        resident = lease.resident
        resident.leases -= 1
        resident.last_used = time.monotonic()
        if resident.retired and resident.leases == 0:
            self._spawn(self._delete(resident))
        self._notify_room()

    async def _resolve_store_ref(self, model: str) -> tuple[str, AdapterSource]:
        if self.store is None:
            raise ModelNotFoundError(self._unknown(model), param="model")
        from adapterkit.store import AdapterNotInStoreError, InvalidStoreRefError

        try:
            record = await asyncio.to_thread(self.store.resolve, model)
        except (AdapterNotInStoreError, InvalidStoreRefError) as exc:
            raise ModelNotFoundError(f"{self._unknown(model)} ({exc})", param="model") from exc
        return record.ref, AdapterSource(store_ref=record.ref)

    def _unknown(self, model: str) -> str:
        where = "a loaded adapter, a store ref" if self.store is not None else "a loaded adapter"
        return (f"model {model!r} is not {where} or the base model {self.base_name!r}; "
                f"GET /v1/models lists what this server serves")

    async def _ensure(self, key: str, source: AdapterSource) -> Resident:
        resident = self.resident.get(key)
        if resident is not None:
            return resident
        async with self._locked(key):
            resident = self.resident.get(key)
            if resident is None:  # the first request for it: load it once, as the others wait on the lock
                internal = self._internal_name(key)
                await self._load_into_slot(source, internal)
                resident = self.resident[key] = Resident(key, internal, source)
        return resident

    # --- admin ------------------------------------------------------------------------
    async def load(self, name: str, path: str, replace: bool = False) -> Resident:
        """Load (or, with `replace`, reload) the folder at `path` as adapter `name`."""
        self._check_public_name(name)
        if name in self.named and not replace:
            raise BadRequestError(
                f"an adapter named {name!r} is already loaded (from {self.named[name].describe()}); unload it "
                "first, or pass \"load_inplace\": true to replace it", param="lora_name")
        source = await self._admin_source(path)
        async with self._locked(name):
            internal = self._internal_name(name)
            await self._load_into_slot(source, internal)
            old = self.resident.pop(name, None)
            self.named[name] = source
            resident = self.resident[name] = Resident(name, internal, source)
        if old is not None:
            await self._retire(old)
        return resident

    async def _admin_source(self, path: str) -> AdapterSource:
        """A folder, or with the `store:` prefix a stored version (the playground's load button sends those)."""
        if not path.startswith(STORE_PATH_PREFIX):
            return AdapterSource(path=Path(path).expanduser())
        if self.store is None:
            raise BadRequestError(f"lora_path {path!r} names a stored adapter but this server has no store; "
                                  "start it with --store [ROOT], or give a folder", param="lora_path")
        _, source = await self._resolve_store_ref(path[len(STORE_PATH_PREFIX):])
        return source

    async def unload(self, name: str) -> None:
        """Forget adapter `name` (a named one, or a resident store ref); its memory is freed
        now, or when the requests using it finish."""
        if name not in self.named and name not in self.resident:
            raise ModelNotFoundError(f"no adapter named {name!r} is loaded; GET /v1/models lists them",
                                     param="lora_name")
        self.named.pop(name, None)
        old = self.resident.pop(name, None)
        self.stats.unloads += 1
        if old is not None:
            await self._retire(old)

    def listing(self) -> list[dict]:
        """Every adapter a request can name without the store: (id, root, resident)."""
        keys = list(self.named) + [k for k in self.resident if k not in self.named]
        out = []
        for key in keys:
            resident = self.resident.get(key)
            source = self.named.get(key) or resident.source  # type: ignore[union-attr]
            out.append({"id": key, "root": source.describe(), "resident": resident is not None,
                        "in_flight": resident.leases if resident else 0})
        return out

    # --- loading and room -------------------------------------------------------------
    async def _load_into_slot(self, source: AdapterSource, internal: str) -> None:
        await self._reserve_room()
        try:
            await self._load(source, internal)
        finally:
            self._loading -= 1
            self._notify_room()

    async def _reserve_room(self) -> None:
        deadline = time.monotonic() + ROOM_WAIT_S
        while len(self.resident) + self._loading >= self.max_loras:
            idle = [r for r in self.resident.values() if r.leases == 0]
            if idle:
                victim = min(idle, key=lambda r: r.last_used)
                del self.resident[victim.key]
                self.stats.evictions += 1
                await self._delete(victim)
                continue
            room = self._room
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFullError(
                    f"all {self.max_loras} adapter slots (--max-loras) are in use by requests in flight; "
                    "retry shortly", retry_after_s=1)
            try:
                await asyncio.wait_for(room.wait(), remaining)
            except TimeoutError:
                continue
        self._loading += 1

    async def _load(self, source: AdapterSource, internal: str) -> None:
        started = time.perf_counter()
        try:
            with _load_errors(source):
                if source.path is not None:
                    await asyncio.wrap_future(self._call(_loader(source.path, internal)))
                else:
                    folder = Path(tempfile.mkdtemp(prefix="adapterkit-serve-"))
                    try:
                        # Reading the store (checksums, copies) happens off the engine thread.
                        await asyncio.to_thread(self.store.get, source.store_ref, folder / "adapter")
                        await asyncio.wrap_future(self._call(_loader(folder / "adapter", internal)))
                    finally:
                        shutil.rmtree(folder, ignore_errors=True)
        except Exception:
            self.stats.load_failures += 1
            raise
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started

    async def _retire(self, resident: Resident) -> None:
        resident.retired = True
        if resident.leases == 0:
            await self._delete(resident)

    async def _delete(self, resident: Resident) -> None:
        if resident.deleted:
            return
        resident.deleted = True
        internal = resident.internal
        await asyncio.wrap_future(self._call(lambda model: model.delete_adapter(internal)))
        self._notify_room()

    # --- small helpers ------------------------------------------------------------------
    def _notify_room(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def _locked(self, key: str):
        """Hold `key`'s lock. The lock lives only while someone holds or waits for it, so cycling
        through thousands of names leaves no lock behind."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    def _internal_name(self, key: str) -> str:
        # Never reused, so a retired adapter's weights and its replacement's coexist until the old leases end.
        return f"{re.sub(r'[^A-Za-z0-9_-]', '_', key)[:64]}-{next(self._counter)}"

    def _check_public_name(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > 200:
            raise BadRequestError(f"adapter name {name!r} is not usable: give a non-empty name without "
                                  "surrounding spaces, at most 200 characters", param="lora_name")
        if name == self.base_name:
            raise BadRequestError(f"{name!r} is the base model's name; pick another adapter name",
                                  param="lora_name")


def _loader(folder: Path, internal: str) -> Callable:
    def load(model) -> None:
        # strict_base: an adapter trained on another base can fit every shape and still be wrong.
        model.load_adapter(folder, adapter_name=internal, strict_base=True)
    return load


@contextlib.contextmanager
def _load_errors(source: AdapterSource):
    """Turn adapterkit's load errors into the request's 4xx."""
    try:
        yield
    except ServeError:
        raise
    except Exception as exc:
        raise _as_serve_error(exc, source) from exc


def _as_serve_error(exc: Exception, source: AdapterSource) -> Exception:
    from adapterkit.store import StoreError

    if isinstance(exc, FileNotFoundError):
        return ModelNotFoundError(f"cannot load adapter from {source.describe()}: {exc}", param="lora_path")
    if isinstance(exc, (AdapterError, StoreError, ValueError, OSError)):
        return AdapterLoadError(f"cannot load adapter from {source.describe()}: {exc}")
    return exc
