"""Adapter store: content-addressed blobs + an index of names, versions and tags (SQLite, or PostgreSQL for many hosts)."""

from adapterkit.store.blobs import BlobStore, LocalBlobStore
from adapterkit.store.errors import (
    AdapterNotInStoreError,
    ArchiveError,
    ArchiveManifestError,
    CorruptArchiveError,
    CorruptStoredFileError,
    InvalidStoreRefError,
    StoreError,
    UnsafeArchiveError,
    UnverifiedArchiveError,
)
from adapterkit.store.index import NewVersion, SQLiteIndex, StoredFile, StoreIndex, VersionRecord
from adapterkit.store.refs import parse_ref
from adapterkit.store.store import (
    AdapterStore,
    BaseMismatchWarning,
    CorruptFile,
    DiskUsage,
    GcReport,
    VerifyReport,
    default_store_root,
)
from adapterkit.store.summary import AdapterSummary, BaseRef, read_folder

__all__ = [
    "AdapterNotInStoreError",
    "AdapterStore",
    "AdapterSummary",
    "ArchiveError",
    "ArchiveManifestError",
    "BaseMismatchWarning",
    "BaseRef",
    "BlobStore",
    "CorruptArchiveError",
    "CorruptFile",
    "CorruptStoredFileError",
    "DiskUsage",
    "GcReport",
    "InvalidStoreRefError",
    "LocalBlobStore",
    "NewVersion",
    "SQLiteIndex",
    "StoreError",
    "StoreIndex",
    "StoredFile",
    "UnsafeArchiveError",
    "UnverifiedArchiveError",
    "VerifyReport",
    "VersionRecord",
    "default_store_root",
    "parse_ref",
    "read_folder",
]
