"""Naming an adapter from the shell: a PEFT folder, or a store ref such as `reverse@prod`.

An existing folder wins; a value that looks like a path but is not a folder is an
error; anything else must be a store ref, resolved before the (slow) base loads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterkit.errors import AdapterFolderNotFoundError, AdapterSourceError


@dataclass(frozen=True)
class AdapterSource:
    """One `--adapter` value, checked: exactly one of `folder` and `ref` is set."""

    spec: str  # as the user wrote it; `/adapter SPEC` in chat matches it
    name: str  # the adapter's name inside the model (a folder's or a ref's name, made unique)
    folder: Path | None = None
    ref: str | None = None  # the store ref, resolved to a version that exists

    @property
    def short_name(self) -> str:
        """What a user may type to pick it: the folder name, or the stored name without version."""
        return self.folder.name if self.folder is not None else (self.ref or "").split("@")[0]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "~", os.sep)) or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def _model_name(text: str, taken: set[str]) -> str:
    """A usable adapter name (no '.' or '/') derived from `text`, unique among `taken`."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", text) or "adapter"
    name, n = base, 2
    while name in taken or name == "__base__":
        name, n = f"{base}_{n}", n + 1
    return name


def resolve_sources(specs: Sequence[str], store_root: str | os.PathLike[str] | None = None,
                    taken: Sequence[str] = ()) -> list[AdapterSource]:
    """Check every `--adapter` value; refs are looked up in the store (default root unless given).

    Raises AdapterFolderNotFoundError for a missing path, AdapterSourceError for a value that is
    neither, and the store's AdapterNotInStoreError for a ref it does not hold.
    """
    names = set(taken)
    sources, store = [], None
    for spec in specs:
        folder = Path(spec).expanduser()
        if folder.is_dir():
            name = _model_name(folder.resolve().name, names)
            sources.append(AdapterSource(spec=spec, name=name, folder=folder))
        elif _looks_like_path(spec) or folder.exists():
            raise AdapterFolderNotFoundError(
                f"adapter folder {spec!r} does not exist (or is not a folder); pass a folder written by "
                f"save_pretrained or `adapterkit train`, or a store ref such as name@latest"
            )
        else:
            store = store or _open_store(store_root)
            record = _resolve_ref(store, spec)
            name = _model_name(record.name, names)
            sources.append(AdapterSource(spec=spec, name=name, ref=record.ref))
        names.add(sources[-1].name)
    return sources


def _open_store(root):
    from adapterkit.store import AdapterStore

    return AdapterStore(root)


def _resolve_ref(store, spec: str):
    from adapterkit.store.errors import InvalidStoreRefError

    try:
        return store.resolve(spec)
    except InvalidStoreRefError as err:
        raise AdapterSourceError(
            f"--adapter {spec!r} is neither an adapter folder nor a store ref ({err}); pass an existing "
            f"folder, or name, name@3, name@latest or name@tag from `adapterkit store ls`"
        ) from None


def load_sources(model: Any, sources: Sequence[AdapterSource], store_root: str | os.PathLike[str] | None = None) -> None:
    """Load each source into `model` (an AdapterModel) under its `name`."""
    store = None
    for source in sources:
        if source.folder is not None:
            model.load_adapter(source.folder, adapter_name=source.name)
        else:
            store = store or _open_store(store_root)
            store.load_into(model, source.ref, adapter_name=source.name)


def open_model(base: str, adapters: Sequence[str] = (), store_root: str | os.PathLike[str] | None = None):
    """`(AdapterModel, tokenizer, sources)`: the base, in eval mode, with every adapter loaded.

    Every `--adapter` value is checked before the base loads; the first adapter is active,
    and with none the model is the base alone.
    """
    sources = resolve_sources(adapters, store_root)
    model, tokenizer = load_model(base, sources, store_root)
    return model, tokenizer, sources


def load_model(base: str, sources: Sequence[AdapterSource], store_root: str | os.PathLike[str] | None = None):
    """`(AdapterModel, tokenizer)` for checked `sources` (from resolve_sources); the first is active."""
    from adapterkit.hf import load_base
    from adapterkit.model.adapter_model import AdapterModel

    base_model, tokenizer = load_base(base)
    model = AdapterModel(base_model)
    load_sources(model, sources, store_root)
    if sources:
        model.set_adapter(sources[0].name)
    model.eval()
    return model, tokenizer
