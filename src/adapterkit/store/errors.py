"""Errors raised by the adapter store, in the family of adapterkit.errors."""

from __future__ import annotations

from adapterkit.errors import AdapterError, CorruptAdapterFileError


class StoreError(AdapterError):
    """Base of the store's own errors."""


class InvalidStoreRefError(StoreError, ValueError):
    """A name, version or tag is not well formed (`name`, `name@3`, `name@latest`, `name@tag`)."""


class AdapterNotInStoreError(StoreError, ValueError, KeyError):
    """No stored adapter matches the name, version or tag asked for."""

    __str__ = ValueError.__str__  # type: ignore[assignment]


class CorruptStoredFileError(CorruptAdapterFileError, StoreError):
    """A stored file no longer matches its checksum (or is gone); names the adapter and the file."""

    def __init__(self, ref: str, path: str, blob: str, problem: str) -> None:
        self.ref, self.path, self.blob, self.problem = ref, path, blob, problem
        super().__init__(
            f"{ref}: stored file {path!r} is corrupt ({problem}; blob {blob[:12]}). "
            f"Run `adapterkit store verify` to list every damaged adapter, then remove and re-put them."
        )
