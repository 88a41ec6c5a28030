"""A vLLM LoRA resolver that loads adapters from an AdapterStore on demand.

With the plugin installed (`pip install adapterkit[vllm]` beside vLLM) and

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ADAPTERKIT_STORE=/shared/store \\
        vllm serve BASE --enable-lora --max-lora-rank 64

(with `ADAPTERKIT_STORE_URL=postgresql://...` too, the index is that PostgreSQL
database and the files are in $ADAPTERKIT_STORE/blobs, as `adapterkit store
--store-url` does),

a request whose `model` is a store reference (`reverse@prod`, `reverse@3`,
`reverse`) makes vLLM ask this resolver. It resolves the reference to an immutable
version, writes that version once as a folder vLLM loads (through the lossless
`export_for_vllm`, so a `.bin` or a `bias: "all"` with no bias tensors still
serves), and returns a `LoRARequest` for it. Every replica that shares the store
resolves the same names to the same versions: the registry vLLM lacks (RFC #12174).

vLLM loads plugins under the entry-point group `vllm.general_plugins` in every
process (`vllm/plugins/__init__.py`, `load_general_plugins`; `VLLM_PLUGINS=adapterkit`
limits it to ours), and asks every registered resolver in turn, only when
VLLM_ALLOW_RUNTIME_LORA_UPDATING is set (`vllm/entrypoints/openai/models/serving.py`).

Returns None (vLLM answers 404, or tries its next resolver) when the reference is
malformed, names nothing in the store, or names an adapter vLLM cannot serve; the
reason goes to the log. vLLM keeps a resolved name for the life of the server
(`OpenAIServingModels.resolve_lora` caches by name), so moving a tag after a
replica has served it does not reload it there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from adapterkit.errors import AdapterError
from adapterkit.integrations.vllm.export import export_for_vllm
from adapterkit.store import AdapterStore, VersionRecord, default_store_root

logger = logging.getLogger(__name__)

RESOLVER_NAME = "adapterkit"
STORE_VARIABLE = "ADAPTERKIT_STORE"  # the store folder; unset: $ADAPTERKIT_HOME/store (AdapterStore's default)
STORE_URL_VARIABLE = "ADAPTERKIT_STORE_URL"  # a PostgreSQL index shared by hosts (the store CLI's variable too)
CACHE_VARIABLE = "ADAPTERKIT_VLLM_CACHE"  # where versions are written as folders


class StoreLoRAResolver(LoRAResolver):
    def __init__(self, store: AdapterStore, cache_dir: str | os.PathLike | None = None,
                 max_lora_rank: int | None = None) -> None:
        self.store = store
        # Beside the store, never inside it: the store owns (and collects) its own files.
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_store_root().parent / "vllm-folders"
        self.max_lora_rank = max_lora_rank

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        # The store is files and SQLite: blocking I/O, kept off vLLM's event loop.
        folder = await asyncio.to_thread(self.materialise, lora_name)
        if folder is None:
            return None
        # vLLM replaces lora_int_id with its own counter; it must be > 0 meanwhile.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(folder), base_model_name=base_model_name)

    def materialise(self, ref: str) -> Path | None:
        """The folder vLLM loads for store reference `ref`, written on first use; None if none."""
        try:
            record = self.store.resolve(ref)
        except (AdapterError, ValueError, KeyError) as exc:
            logger.info("adapterkit resolver: %r is not in %r: %s", ref, self.store, exc)
            return None
        folder = self.cache_dir / _folder_name(record)
        if (folder / "adapter_config.json").is_file():
            return folder  # versions are immutable, so a written folder stays right
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            self.store.get(record.ref, scratch / "stored")  # every checksum checked
            export_for_vllm(scratch / "stored", scratch / "served", self.max_lora_rank)
            try:
                os.replace(scratch / "served", folder)
            except OSError:
                if not (folder / "adapter_config.json").is_file():  # not another replica winning the race
                    raise
        except AdapterError as exc:
            logger.error("adapterkit resolver: %s (%s) cannot be served by vLLM: %s", ref, record.ref, exc)
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return folder


def _folder_name(record: VersionRecord) -> str:
    return f"{record.name.replace('/', '--')}@{record.version}"


def register() -> None:
    """The `vllm.general_plugins` entry point: register the store resolver with vLLM.

    vLLM may call it in several processes and more than once; registering again replaces
    the resolver with an equal one."""
    folder = Path(os.environ.get(STORE_VARIABLE) or default_store_root())
    url = os.environ.get(STORE_URL_VARIABLE)
    store = AdapterStore(url, blobs=folder / "blobs") if url else AdapterStore(folder)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, StoreLoRAResolver(store, os.environ.get(CACHE_VARIABLE)))
