"""Errors raised by the adapter store, in the family of adapterkit.errors."""

from __future__ import annotations

from adapterkit.errors import AdapterError, CorruptAdapterFileError


class StoreError(AdapterError):
    """Base of the store's own errors."""


class InvalidStoreRefError(StoreError, ValueError):
    """A name, version or tag is not well formed (`name`, `name@3`, `name@latest`, `name@tag`)."""


class AdapterNotInStoreError(StoreError, ValueError, KeyError):
    """No stored adapter matches the name, version or tag asked for."""

    __str__ = ValueError.__str__


class CorruptStoredFileError(CorruptAdapterFileError, StoreError):
    """A stored file no longer matches its checksum (or is gone); names the adapter and the file."""

    def __init__(self, ref: str, path: str, blob: str, problem: str) -> None:
        self.ref, self.path, self.blob, self.problem = ref, path, blob, problem
        super().__init__(
            f"{ref}: stored file {path!r} is corrupt ({problem}; blob {blob[:12]}). "
            f"Run `adapterkit store verify` to list every damaged adapter, then remove and re-put them."
        )


# --- archives (export / import) -----------------------------------------------
class ArchiveError(StoreError, ValueError):
    """An archive given to `import` cannot be imported; nothing was imported."""


class UnsafeArchiveError(ArchiveError):
    """A member is a link, a device, a FIFO or anything but a regular file or folder, or its path
    would land outside the extraction folder (absolute, `..`, a drive letter, over-long)."""


class CorruptArchiveError(ArchiveError):
    """The archive is truncated, damaged, or a file in it does not match the manifest's SHA-256."""


class ArchiveManifestError(ArchiveError):
    """The archive's manifest is malformed: a field is missing, of the wrong type, or out of range."""


class UnverifiedArchiveError(ArchiveError):
    """The archive carries no per-file SHA-256 (an old export or a plain tar); import refuses it
    unless asked to import unverified archives explicitly."""
