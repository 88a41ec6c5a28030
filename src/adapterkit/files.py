"""File helpers shared by every layer (stdlib only): content digests, durable directory entries,
and byte counts as people read them."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a file, read in chunks; the size is what was hashed."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename or create inside it) to disk.

    Platforms that cannot open a directory (Windows) have nothing to flush this way; skip there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def format_bytes(count: float) -> str:
    """A byte count in binary units (KiB, MiB, ...), as every table and message prints it."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value):,d} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
