"""Blob storage: file contents addressed by their SHA-256.

A blob is written to a temporary file that is fsynced and then renamed into
place, so a reader never sees half a blob and a crash leaves at most a stray
temporary file (which `gc` removes). Identical contents share one blob. A put
whose blob is already there re-checks it (size, then SHA-256) and rewrites it
if it is damaged: putting an adapter again is how a corrupt store heals.

`BlobStore` is the small interface the store needs; `LocalBlobStore` keeps blobs
in a directory. An object store (S3 and the like) can meet the same protocol.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from adapterkit.files import CHUNK_BYTES as _CHUNK
from adapterkit.files import fsync_dir, sha256_file

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    modified: float  # seconds since the epoch


@runtime_checkable
class BlobStore(Protocol):
    """Where file contents live, keyed by their SHA-256 hex digest."""

    def has(self, sha256: str) -> bool: ...

    def put_file(self, source: Path, sha256: str) -> bool:
        """Store `source` under `sha256` unless an intact copy is there; True if it was written.

        A blob already present is re-checked against `sha256`; a damaged one is replaced.
        """
        ...

    def open(self, sha256: str) -> BinaryIO:
        """A binary reader; FileNotFoundError if the blob is absent."""
        ...

    def size(self, sha256: str) -> int: ...

    def delete(self, sha256: str) -> None: ...

    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    def remove_stale_temporaries(self, older_than: float) -> int:
        """Delete temporary files left by crashed writers; how many were removed."""
        ...


class LocalBlobStore:
    """Blobs as files: `<root>/<first two hex digits>/<full digest>`."""

    def __init__(self, root: str | os.PathLike[str], durable: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.durable = durable

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, source: Path, sha256: str) -> bool:
        target = self.path(sha256)
        if self._intact(target, sha256, os.stat(source).st_size):
            # Refresh the time so a grace period counts from the last writer that needed it.
            os.utime(target)
            return False
        target.parent.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                digest = hashlib.sha256()
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ValueError(f"{source} changed while being stored (its SHA-256 no longer matches)")
            os.replace(tmp_name, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        if self.durable:
            fsync_dir(target.parent)
        return True

    @staticmethod
    def _intact(target: Path, sha256: str, size: int) -> bool:
        """True if `target` is a regular file of `size` bytes hashing to `sha256`."""
        try:
            if not target.is_file() or target.is_symlink() or target.stat().st_size != size:
                return False
            return sha256_file(target)[0] == sha256
        except FileNotFoundError:  # removed by a concurrent gc between the checks
            return False

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.path(sha256))

    def iter_blobs(self) -> Iterator[BlobInfo]:
        for shard in _scandir(self.root):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in _scandir(shard.path):
                if entry.name.startswith(_TMP_PREFIX) or len(entry.name) != 64:
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # removed by a concurrent gc
                    continue
                yield BlobInfo(entry.name, stat.st_size, stat.st_mtime)

    def remove_stale_temporaries(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for shard in _scandir(self.root):
            if not shard.is_dir():
                continue
            for entry in _scandir(shard.path):
                if not entry.name.startswith(_TMP_PREFIX):
                    continue
                with suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed


def copy_blob(blobs: BlobStore, sha256: str, destination: Path) -> str:
    """Copy a blob out of any BlobStore, hashing on the way; returns the digest seen."""
    digest = hashlib.sha256()
    with blobs.open(sha256) as src, open(destination, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def hash_blob(blobs: BlobStore, sha256: str) -> str:
    digest = hashlib.sha256()
    with blobs.open(sha256) as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _scandir(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore", "copy_blob", "hash_blob"]
