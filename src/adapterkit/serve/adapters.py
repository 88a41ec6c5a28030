"""ResidentAdapters: which adapters the server knows, which are loaded, and leases on them.

Three kinds of names reach a request's `model` field:
- the base model's name: no adapter;
- a named adapter (given at start with --adapter NAME=PATH, or by the admin load endpoint),
  which stays addressable even when evicted: its folder is loaded again on demand;
- a store ref (`name`, `name@3`, `name@prod`), resolved to one version `name@N` per request
  and loaded on first use.
A request may instead carry `merged_adapters` (serve/combinations.py): a weighted combination
of such adapters, built once per definition and then resident like any other adapter (it
takes a slot, is evicted by LRU, and is deleted when a source it was built from is replaced
or unloaded).

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
import dataclasses
import itertools
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from adapterkit.core.config import CONFIG_NAME, LoraConfig
from adapterkit.errors import AdapterCombinationError, AdapterError
from adapterkit.io.fingerprint import BaseFingerprint
from adapterkit.model.mixed import BASE_ROW
from adapterkit.serve import combinations
from adapterkit.serve.combinations import COMBINATION_KEY_PREFIX, CombinationDefinition
from adapterkit.serve.errors import (
    AdapterLoadError,
    BadRequestError,
    IncompatibleAdaptersError,
    ModelNotFoundError,
    QueueFullError,
    ServeError,
)
from adapterkit.serve.protocol import MergedAdapters

# How long a request waits for a free adapter slot when every loaded adapter is in use.
ROOM_WAIT_S = 30.0
# A `lora_path` naming a stored version (`store:name@3`), and the `root` /v1/models shows for one.
STORE_PATH_PREFIX = "store:"


@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter's weights come from: a PEFT folder, one store version, or a combination."""

    path: Path | None = None
    store_ref: str | None = None  # name@N, resolved
    registration: int = 0  # a named adapter's: a new one each time the name is (re)loaded
    combination: str | None = None  # a combination's canonical definition

    def describe(self) -> str:
        if self.combination is not None:
            return f"merged_adapters {self.combination}"
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
    built_from: tuple[str, ...] = ()  # a combination's source keys
    config: LoraConfig | None = None  # as loaded (merged_adapters checks its sources' configs first)

    @property
    def version(self) -> str:
        return version_of(self.key, self.source)


def version_of(key: str, source: AdapterSource) -> str:
    """The exact weights `key` stands for, as a combination's definition names them."""
    if source.path is None and source.store_ref == key:
        return f"{STORE_PATH_PREFIX}{key}"  # a store version never changes
    return f"{key}#{source.registration}"  # a named adapter: each (re)load is a new registration


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
    combination_hits: int = 0  # merged_adapters requests served by a resident combination
    combination_misses: int = 0  # ... that had to build it (refused or failed builds included)
    combination_failures: int = 0  # builds refused (incompatible adapters) or failed


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
        self._registrations = itertools.count(1)
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
            source = AdapterSource(path=folder, registration=next(self._registrations))
            internal = self._internal_name(name)
            with _load_errors(source):
                config = self._call(_loader(folder, internal)).result()
            self.named[name] = source
            self.resident[name] = Resident(name, internal, source, config=config)
            self.stats.loads += 1

    # --- requests -----------------------------------------------------------------------
    async def acquire(self, model: str) -> Lease:
        """A lease on the adapter `model` names, loading it if needed (404 if nothing has that name)."""
        if model == self.base_name:
            return Lease(model, BASE_ROW)
        key, source = await self._resolve(model)
        resident = await self._ensure(key, source)
        return self._lease(model, resident)  # no await since _ensure returned: nothing can evict it in between

    def _lease(self, model: str, resident: Resident) -> Lease:
        resident.leases += 1
        resident.last_used = time.monotonic()
        return Lease(model, resident.internal, resident)

    async def _resolve(self, model: str) -> tuple[str, AdapterSource]:
        if model in self.named:
            return model, self.named[model]
        return await self._resolve_store_ref(model)

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

    async def acquire_combination(self, model: str, merged: MergedAdapters) -> Lease:
        """A lease on the combination `merged` defines, built (from its sources, loaded if needed)
        on the first request for that definition. Everything that needs no model is checked
        before anything loads; a combination the model refuses (ranks, targets...) is a 400 and
        leaves the model as it was, apart from the sources loaded for it being unloaded again."""
        if model != self.base_name:
            raise BadRequestError(
                f"model {model!r} with merged_adapters: the combination replaces the adapter, so set model to the "
                f"base model's name {self.base_name!r} and list every adapter in merged_adapters.ids", param="model")
        if len(merged.ids) + 1 > self.max_loras:
            raise BadRequestError(
                f"merged_adapters.ids: combining {len(merged.ids)} adapters needs {len(merged.ids) + 1} adapter slots (the sources and "
                f"the combination) but --max-loras is {self.max_loras}; combine fewer or raise --max-loras",
                param="merged_adapters.ids")
        for _attempt in range(3):
            sources = await self._combination_sources(merged.ids)
            definition = CombinationDefinition.of(merged, [version_of(k, s) for k, s in sources])
            key = definition.key
            resident = self.resident.get(key)
            if resident is None:
                async with self._locked(key):
                    resident = self.resident.get(key)
                    if resident is None:
                        self.stats.combination_misses += 1
                        resident = await self._build_combination(key, definition, sources)
                        if resident is None:  # a source was replaced meanwhile: define it again
                            continue
                        return self._lease(model, resident)
            self.stats.combination_hits += 1
            return self._lease(model, resident)
        raise QueueFullError("the adapters in merged_adapters keep being replaced while the combination is built; "
                             "retry shortly")

    async def _combination_sources(self, ids: list[str]) -> list[tuple[str, AdapterSource]]:
        sources = []
        for i, name in enumerate(ids):
            param = f"merged_adapters.ids.{i}"
            if name == self.base_name:
                raise BadRequestError(f"merged_adapters.ids[{i}] is the base model {name!r}, which has no adapter "
                                      "weights to combine; list adapters only", param=param)
            try:
                sources.append(await self._resolve(name))
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"merged_adapters.ids[{i}]: {exc.message}", param=param) from exc
        keys = [key for key, _ in sources]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise BadRequestError(f"merged_adapters.ids name {repeated} more than once (a store ref and its version "
                                  "resolve to the same adapter); name each adapter once and add up its weights",
                                  param="merged_adapters.ids")
        return sources

    async def _build_combination(self, key: str, definition: CombinationDefinition,
                                 sources: list[tuple[str, AdapterSource]]) -> Resident | None:
        """Lease the sources (loading them if needed), build the combination in a slot of its own,
        then let the sources go. None if a source changed since `definition` was made."""
        await self._check_combinable(definition, sources)
        leases: list[Lease] = []
        fresh: list[Resident] = []  # sources this build loaded: unloaded again if it fails
        built = False
        try:
            for i, (source_key, source) in enumerate(sources):
                loaded_before = source_key in self.resident
                try:
                    resident = await self._ensure(source_key, source)
                except ServeError as exc:
                    exc.param = exc.param if exc.param not in (None, "lora_path") else f"merged_adapters.ids.{i}"
                    raise
                leases.append(self._lease(source_key, resident))
                if not loaded_before:
                    fresh.append(resident)
            if tuple(lease.resident.version for lease in leases if lease.resident) != definition.sources:
                return None
            internal = self._internal_name(key)
            await self._reserve_room()
            try:
                gather = combinations.gatherer(definition, [lease.adapter for lease in leases], internal)
                inputs = await asyncio.wrap_future(self._call(gather))
                plan = await asyncio.to_thread(combinations.compute, definition, inputs)
                await asyncio.wrap_future(self._call(combinations.installer(internal, plan)))
            except AdapterCombinationError as exc:
                self.stats.combination_failures += 1
                raise IncompatibleAdaptersError(f"merged_adapters cannot be combined: {exc}",
                                                param="merged_adapters") from exc
            except Exception:
                self.stats.combination_failures += 1
                raise
            finally:
                self._loading -= 1
                self._notify_room()
            source = AdapterSource(combination=definition.canonical())
            resident = Resident(key, internal, source, built_from=tuple(k for k, _ in sources))
            if any(lease.resident.retired for lease in leases if lease.resident):
                resident.retired = True  # a source was unloaded or replaced meanwhile: serve this request, then free it
            else:
                self.resident[key] = resident
            built = True
            return resident
        finally:
            for lease in leases:
                self.release(lease)
            if not built:
                for resident in fresh:
                    if resident.leases == 0 and self.resident.get(resident.key) is resident:
                        del self.resident[resident.key]
                        await self._delete(resident)

    async def _check_combinable(self, definition: CombinationDefinition,
                                sources: list[tuple[str, AdapterSource]]) -> None:
        """Refuse, before any source loads (and so before anything is evicted), what the sources'
        configs already rule out; the build checks the loaded adapters module by module again."""
        from adapterkit.model.combine import combined_config

        configs: list[LoraConfig] = []
        recorded_bases: list[BaseFingerprint | None] = []
        for key, source in sources:
            resident = self.resident.get(key)
            if resident is not None and resident.source == source and resident.config is not None:
                configs.append(resident.config)
                recorded_bases.append(None)  # checked when it loaded
                continue
            head = await asyncio.to_thread(_read_source, source, self.store)
            if head is None:
                return  # unreadable: loading it reports why
            configs.append(head[0])
            recorded_bases.append(head[1])
        try:
            if any(recorded_bases):
                # The load's own check (strict_base), asked of the model before anything loads.
                others = await asyncio.wrap_future(self._call(lambda model: [
                    i for i, base in enumerate(recorded_bases) if base and not model.base_fingerprint.matches(base)]))
                if others:
                    i = others[0]
                    raise AdapterCombinationError(
                        f"{sources[i][0]!r} (merged_adapters.ids[{i}]) was trained on another base "
                        f"({recorded_bases[i].describe()}) than the one this server serves; combine adapters "
                        "trained on this base")
            combined_config([key for key, _ in sources], configs, definition.strategy, type_field="merge_strategy",
                            other_ranks_fix="Use merge_strategy 'cat' (exact for any ranks), or combine them "
                                            "offline with an '*_svd' type (adapterkit combine) and load the result.")
        except AdapterCombinationError as exc:
            self.stats.combination_failures += 1
            raise IncompatibleAdaptersError(f"merged_adapters cannot be combined: {exc}",
                                            param="merged_adapters") from exc

    async def _retire_combinations_of(self, name: str) -> None:
        """A source changed or went: the combinations built from it are stale, and free their slots."""
        for resident in [r for r in self.resident.values() if name in r.built_from]:
            del self.resident[resident.key]
            await self._retire(resident)

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
                config = await self._load_into_slot(source, internal)
                resident = self.resident[key] = Resident(key, internal, source, config=config)
        return resident

    # --- admin ------------------------------------------------------------------------
    async def load(self, name: str, path: str, replace: bool = False) -> Resident:
        """Load (or, with `replace`, reload) the folder at `path` as adapter `name`."""
        self._check_public_name(name)
        if name in self.named and not replace:
            raise BadRequestError(
                f"an adapter named {name!r} is already loaded (from {self.named[name].describe()}); unload it "
                "first, or pass \"load_inplace\": true to replace it", param="lora_name")
        source = await self._admin_source(path, registration=next(self._registrations))
        async with self._locked(name):
            internal = self._internal_name(name)
            config = await self._load_into_slot(source, internal)
            old = self.resident.pop(name, None)
            self.named[name] = source
            resident = self.resident[name] = Resident(name, internal, source, config=config)
        if old is not None:
            await self._retire(old)
            await self._retire_combinations_of(name)
        return resident

    async def _admin_source(self, path: str, registration: int) -> AdapterSource:
        """A folder, or with the `store:` prefix a stored version (the playground's load button sends those)."""
        if not path.startswith(STORE_PATH_PREFIX):
            return AdapterSource(path=Path(path).expanduser(), registration=registration)
        if self.store is None:
            raise BadRequestError(f"lora_path {path!r} names a stored adapter but this server has no store; "
                                  "start it with --store [ROOT], or give a folder", param="lora_path")
        _, source = await self._resolve_store_ref(path[len(STORE_PATH_PREFIX):])
        return dataclasses.replace(source, registration=registration)

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
        await self._retire_combinations_of(name)

    def listing(self) -> list[dict]:
        """Every adapter a request can name without the store: (id, root, resident)."""
        keys = list(self.named) + [k for k, r in self.resident.items() if k not in self.named and not r.built_from]
        out = []
        for key in keys:
            resident = self.resident.get(key)
            source = self.named.get(key) or resident.source  # type: ignore[union-attr]
            out.append({"id": key, "root": source.describe(), "resident": resident is not None,
                        "in_flight": resident.leases if resident else 0})
        return out

    # --- loading and room -------------------------------------------------------------
    async def _load_into_slot(self, source: AdapterSource, internal: str) -> LoraConfig:
        await self._reserve_room()
        try:
            return await self._load(source, internal)
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

    async def _load(self, source: AdapterSource, internal: str) -> LoraConfig:
        started = time.perf_counter()
        try:
            with _load_errors(source):
                if source.path is not None:
                    config = await asyncio.wrap_future(self._call(_loader(source.path, internal)))
                else:
                    folder = Path(tempfile.mkdtemp(prefix="adapterkit-serve-"))
                    try:
                        # Reading the store (checksums, copies) happens off the engine thread.
                        await asyncio.to_thread(self.store.get, source.store_ref, folder / "adapter")
                        config = await asyncio.wrap_future(self._call(_loader(folder / "adapter", internal)))
                    finally:
                        shutil.rmtree(folder, ignore_errors=True)
        except Exception:
            self.stats.load_failures += 1
            raise
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started
        return config

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
        if name.startswith(COMBINATION_KEY_PREFIX):
            raise BadRequestError(f"adapter names starting with {COMBINATION_KEY_PREFIX!r} are kept for merged_adapters "
                                  "combinations; pick another adapter name", param="lora_name")


def _loader(folder: Path, internal: str) -> Callable:
    def load(model) -> LoraConfig:
        # strict_base: an adapter trained on another base can fit every shape and still be wrong.
        model.load_adapter(folder, adapter_name=internal, strict_base=True)
        return model.peft_config[internal]
    return load


def _read_source(source: AdapterSource, store) -> tuple[LoraConfig, BaseFingerprint | None] | None:
    """An adapter's config and recorded base fingerprint, without loading it (None if unreadable:
    its load then reports why)."""
    try:
        if source.path is not None:
            return _read_folder_head(source.path)
        with tempfile.TemporaryDirectory(prefix="adapterkit-serve-") as folder:
            store.get(source.store_ref, Path(folder) / "adapter")
            return _read_folder_head(Path(folder) / "adapter")
    except Exception:
        return None


def _read_folder_head(folder: Path) -> tuple[LoraConfig, BaseFingerprint | None]:
    from adapterkit.io.folder import find_weights
    from adapterkit.store.summary import read_safetensors_header

    weights = find_weights(folder)
    metadata = read_safetensors_header(weights)[1] if weights.suffix == ".safetensors" else {}
    return LoraConfig.from_json_file(str(folder / CONFIG_NAME)), BaseFingerprint.from_metadata(metadata)


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
