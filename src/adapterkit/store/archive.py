"""Tar archives of stored adapters: a safe reader, and the manifest `export` writes.

Reading never calls tarfile's extract: every member is checked first (a regular
file or a folder, under a relative path that stays inside the extraction
folder), the archive must end with tar's end-of-archive marker (so a cut at a
member boundary is caught) and zero padding (which also makes gzip check its
CRC), the caller checks the listing and the manifest against each other, and
only then are the regular files copied out by this module's own code,
with files opened O_EXCL|O_NOFOLLOW in folders it created itself. No link is
ever created, so no chain of links can lead outside (tarfile's `filter="data"`
was bypassed that way on the Python this project runs).

The manifest, `adapterkit-export.json`, is the archive's first member:

    {"format": "adapterkit-store-export", "version": 2,
     "adapters": [{"name", "version", "folder", "created_at", "tags", "metadata", "base",
                   "files": {"adapter_config.json": {"sha256": ..., "size": ...}, ...}}, ...],
     "sha256": SHA-256 of the manifest without this key, as canonical JSON}

Every file is checked against its SHA-256 and the manifest against its own, so a
bit flipped anywhere in an uncompressed archive is caught too. Version 1
manifests (adapterkit before this format) and plain tars of PEFT folders carry
no checksums: `read_manifest` reports them as unverified and the store refuses
them unless the caller opts in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import math
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from adapterkit.errors import AdapterError
from adapterkit.files import CHUNK_BYTES
from adapterkit.store.errors import (
    ArchiveManifestError,
    CorruptArchiveError,
    InvalidStoreRefError,
    UnsafeArchiveError,
)
from adapterkit.store.refs import check_name, check_tag

MANIFEST_NAME = "adapterkit-export.json"
MANIFEST_FORMAT = "adapterkit-store-export"
MANIFEST_VERSION = 2

_MAX_PATH_CHARS = 1024
_MAX_PART_BYTES = 255  # NAME_MAX on Linux and macOS
_MAX_DEPTH = 32
_MAX_MEMBERS = 100_000
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_MAX_TEXT = 1000  # base name / architecture
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9A-Za-z]{1,128}")
_BLOCK = tarfile.BLOCKSIZE
T = TypeVar("T")

# Everything a damaged archive can make tarfile, gzip, zlib, bz2 or lzma raise while reading.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, struct.error)

_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True)
class ExtractedFile:
    sha256: str
    size: int


@dataclass
class ExtractedArchive:
    """What `extract_archive` wrote under `root`: relative POSIX path -> digest and size."""

    root: Path
    files: dict[str, ExtractedFile] = field(default_factory=dict)


# --- reading ------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveListing:
    """What an archive holds, known before anything is extracted."""

    sizes: dict[str, int]  # every regular file: relative POSIX path -> size its header gives
    manifest: bytes | None  # the top-level manifest's contents, if the archive has one


def extract_archive(archive: Path, into: Path, plan: Callable[[ArchiveListing], T]) -> tuple[ExtractedArchive, T]:
    """Check every member of `archive`, call `plan` on its listing, then copy its regular files
    under `into` (an empty folder). `plan` sees the paths, sizes and manifest before a single byte
    is written, so an archive whose listing is wrong (or that would fill the disk) is refused first."""
    with open(archive, "rb") as raw, _reading(archive):
        tar = tarfile.open(fileobj=raw, mode="r:*")
        with tar:
            members = _checked_members(archive, tar)
            _check_end_of_archive(archive, tar)
            sizes = {"/".join(parts): member.size for member, parts in members}
            manifest = next((_read_small(archive, tar, m) for m, parts in members if parts == [MANIFEST_NAME]), None)
            planned = plan(ArchiveListing(sizes, manifest))
            extracted = ExtractedArchive(into)
            for member, parts in members:
                extracted.files["/".join(parts)] = _copy_member(archive, tar, member, into, parts)
    return extracted, planned


def _read_small(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > _MAX_MANIFEST_BYTES:
        raise ArchiveManifestError(f"{MANIFEST_NAME} is {member.size} bytes, over the {_MAX_MANIFEST_BYTES} allowed")
    source = tar.extractfile(member)
    assert source is not None
    with source:
        data = source.read()
    if len(data) != member.size:
        raise CorruptArchiveError(f"{archive}: {member.name!r} holds {len(data)} bytes, its header says {member.size}")
    _check_padding(archive, tar.fileobj, member)
    return data


@contextmanager
def _reading(archive: Path) -> Iterator[None]:
    """Turn whatever a damaged stream raises into one typed error naming the archive."""
    try:
        yield
    except _READ_ERRORS as exc:
        if isinstance(exc, AdapterError):  # ours, or the caller's plan's: already typed and worded
            raise
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise  # a real I/O error (disk full, permission), not a damaged archive
        detail = " ".join(str(exc).split()) or type(exc).__name__  # tarfile lists each method it tried, a line each
        raise CorruptArchiveError(
            f"{archive} is truncated or damaged ({detail}); nothing was imported. Copy or export it again"
        ) from None


def _checked_members(archive: Path, tar: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, list[str]]]:
    """Every member, refused unless it is a regular file or a folder at a safe relative path."""
    files: list[tuple[tarfile.TarInfo, list[str]]] = []
    file_paths: set[str] = set()
    dir_paths: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > _MAX_MEMBERS:
            raise UnsafeArchiveError(f"{archive} holds more than {_MAX_MEMBERS} members; not an adapter archive")
        kind = _member_kind(member)
        if kind is not None:
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is {kind}; archives may hold only regular files and "
                f"folders. Nothing was imported"
            )
        parts = safe_relative_parts(member.name, f"{archive}: member")
        if not parts:  # "./": the archive's own root folder
            continue
        path = "/".join(parts)
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in file_paths:
                raise UnsafeArchiveError(f"{archive}: {path!r} lies under {parent!r}, which is a file")
            dir_paths.add(parent)
        if member.isdir():
            if path in file_paths:
                raise UnsafeArchiveError(f"{archive}: {path!r} is both a file and a folder")
            dir_paths.add(path)
            continue
        if path in file_paths:
            raise UnsafeArchiveError(f"{archive}: {path!r} appears twice; a later copy would replace the first")
        if path in dir_paths:
            raise UnsafeArchiveError(f"{archive}: {path!r} is both a file and a folder")
        file_paths.add(path)
        files.append((member, parts))
    return files


def _member_kind(member: tarfile.TarInfo) -> str | None:
    """None for a regular file or a folder; otherwise what the member is, in words."""
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and member.sparse is None:
        return None
    if member.type == tarfile.DIRTYPE:
        return None
    return _MEMBER_KINDS.get(member.type, f"a member of tar type {member.type!r}")


def safe_relative_parts(name: object, what: str) -> list[str]:
    """The parts of a relative POSIX path that stays inside its folder, or UnsafeArchiveError.

    Refused: absolute paths, `..`, backslashes, drive letters and other colons, control
    characters, names that are not UTF-8, and paths past 1024 characters, a part past
    255 bytes or 32 levels. A leading `./` (as `tar -C dir .` writes) is dropped.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeArchiveError(f"{what} has an empty or non-text path {name!r}")
    shown = name if len(name) <= 120 else name[:120] + "..."
    problem = None
    if len(name) > _MAX_PATH_CHARS:
        problem = f"is longer than {_MAX_PATH_CHARS} characters"
    elif name.startswith("/"):
        problem = "is absolute"
    elif "\\" in name:
        problem = "contains a backslash"
    elif ":" in name:
        problem = "contains ':' (a drive letter or stream name)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
    if problem is None:
        trimmed = name.rstrip("/")
        while trimmed.startswith("./"):
            trimmed = trimmed[2:]
        parts = [] if trimmed in ("", ".") else trimmed.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "has an empty, '.' or '..' part"
        elif any(len(p.encode("utf-8")) > _MAX_PART_BYTES for p in parts):
            problem = f"has a part longer than {_MAX_PART_BYTES} bytes"
        elif len(parts) > _MAX_DEPTH:
            problem = f"is more than {_MAX_DEPTH} levels deep"
        else:
            return parts
    raise UnsafeArchiveError(f"{what} path {shown!r} {problem}; it could land outside the import folder")


def _check_end_of_archive(archive: Path, tar: tarfile.TarFile) -> None:
    """tarfile stops quietly at a truncated or damaged header; insist on the end marker and zero padding.

    Reading to the end also makes gzip, bz2 and xz check their own CRCs.
    """
    stream = tar.fileobj
    assert stream is not None
    stream.seek(tar.offset)
    zeros = 0
    while chunk := stream.read(CHUNK_BYTES):
        if chunk.count(0) != len(chunk):
            raise CorruptArchiveError(
                f"{archive} is damaged: data after the last readable member at byte {tar.offset} "
                f"(a damaged header, or trailing garbage); nothing was imported"
            )
        zeros += len(chunk)
    if zeros < 2 * _BLOCK:
        raise CorruptArchiveError(
            f"{archive} is truncated: it ends without tar's end-of-archive marker; nothing was imported. "
            f"Copy or export it again"
        )


def _copy_member(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path,
                 parts: list[str]) -> ExtractedFile:
    """Copy one regular member to `into/parts`, hashing it; checks its size and block padding."""
    folder = into
    for part in parts[:-1]:
        folder = folder / part
        if not folder.is_dir():
            os.mkdir(folder)  # ours: created here, never a link
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(folder / parts[-1], flags, 0o666)  # the umask decides the mode, as for any new file
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        with source:
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    if size != member.size:
        raise CorruptArchiveError(f"{archive}: {member.name!r} holds {size} bytes, its header says {member.size}")
    _check_padding(archive, tar.fileobj, member)
    return ExtractedFile(digest.hexdigest(), size)


def _check_padding(archive: Path, stream: IO[bytes] | Any, member: tarfile.TarInfo) -> None:
    """The bytes between a member's data and the next block are zeros; anything else is damage."""
    pad = -member.size % _BLOCK
    if not pad or stream is None:
        return
    stream.seek(member.offset_data + member.size)
    if stream.read(pad) != bytes(pad):
        raise CorruptArchiveError(f"{archive}: the padding after {member.name!r} is not zeros; the archive is damaged")


# --- the manifest ------------------------------------------------------------
@dataclass(frozen=True)
class ManifestEntry:
    name: str
    folder: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    base: dict[str, str] | None
    files: dict[str, ExtractedFile] | None  # None in an unverified (version 1) manifest


@dataclass(frozen=True)
class Manifest:
    version: int
    entries: list[ManifestEntry]

    @property
    def verified(self) -> bool:
        return self.version >= 2


def manifest_bytes(entries: list[dict[str, Any]]) -> bytes:
    """The manifest `export` writes: the entries, the format, and the manifest's own SHA-256."""
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "adapters": entries}
    return json.dumps({**body, "sha256": _canonical_sha256(body)}, indent=1, sort_keys=True).encode()


def _canonical_sha256(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(data: bytes) -> Manifest:
    """Parse and check a manifest; ArchiveManifestError names the first field that is wrong."""
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ArchiveManifestError(f"{MANIFEST_NAME} is {len(data)} bytes, over the {_MAX_MANIFEST_BYTES} allowed")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ArchiveManifestError(f"{MANIFEST_NAME} is not valid UTF-8 JSON ({detail})") from None
    if not isinstance(raw, dict):
        raise ArchiveManifestError(f"{MANIFEST_NAME} must hold a JSON object, got {_kind(raw)}")
    if raw.get("format") != MANIFEST_FORMAT:
        raise ArchiveManifestError(f"{MANIFEST_NAME}: 'format' must be {MANIFEST_FORMAT!r}, got {_show(raw.get('format'))}")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise ArchiveManifestError(f"{MANIFEST_NAME}: 'version' must be 1 or {MANIFEST_VERSION}, got {_show(version)}")
    if version > MANIFEST_VERSION:
        raise ArchiveManifestError(
            f"{MANIFEST_NAME}: format version {version} was written by a newer adapterkit; upgrade adapterkit"
        )
    representable = True
    if version >= 2:
        body = {k: v for k, v in raw.items() if k != "sha256"}
        recorded = raw.get("sha256")
        if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
            raise _bad("sha256", "the manifest's own SHA-256 (64 lowercase hex digits)", recorded)
        try:
            expected = _canonical_sha256(body)
        except (ValueError, RecursionError):  # NaN/Infinity: let the field checks below name the field
            representable = False
        else:
            if recorded != expected:
                raise CorruptArchiveError(
                    f"{MANIFEST_NAME} does not match its own SHA-256 (recorded {recorded[:12]}); the archive is "
                    f"damaged or was edited. Nothing was imported; export it again"
                )
    adapters = raw.get("adapters")
    if not isinstance(adapters, list):
        raise ArchiveManifestError(f"{MANIFEST_NAME}: 'adapters' must be a list, got {_kind(adapters)}")
    entries = [_entry(item, f"adapters[{i}]", verified=version >= 2) for i, item in enumerate(adapters)]
    _check_folders_apart(entries)
    if not representable:
        raise ArchiveManifestError(f"{MANIFEST_NAME} holds values JSON cannot represent (NaN, Infinity)")
    return Manifest(version, entries)


def _entry(item: object, where: str, verified: bool) -> ManifestEntry:
    if not isinstance(item, dict):
        raise _bad(where, "a JSON object", item)
    name = _required(item, "name", where)
    if not isinstance(name, str):
        raise _bad(f"{where}.name", "an adapter name (text)", name)
    try:
        check_name(name)
    except InvalidStoreRefError as exc:
        raise ArchiveManifestError(f"{MANIFEST_NAME}: {where}.name: {exc}") from None
    folder = _required(item, "folder", where)
    if not isinstance(folder, str):
        raise _bad(f"{where}.folder", "a relative folder path (text)", folder)
    try:
        folder_parts = safe_relative_parts(folder, f"{MANIFEST_NAME}: {where}.folder")
    except UnsafeArchiveError as exc:
        raise ArchiveManifestError(str(exc)) from None
    if not folder_parts:
        raise _bad(f"{where}.folder", "a folder inside the archive, not its root", folder)
    if "version" in item:
        version = item["version"]
        if type(version) is not int or not 1 <= version < 2**63:
            raise _bad(f"{where}.version", "a whole number from 1", version)
    if "created_at" in item:
        created = item["created_at"]
        if type(created) not in (int, float) or not math.isfinite(created) or created < 0:
            raise _bad(f"{where}.created_at", "seconds since the epoch (a finite number)", created)
    tags = item.get("tags", [])
    if not isinstance(tags, list):
        raise _bad(f"{where}.tags", "a list of tags", tags)
    for j, tag in enumerate(tags):
        try:
            check_tag(tag)
        except InvalidStoreRefError as exc:
            raise ArchiveManifestError(f"{MANIFEST_NAME}: {where}.tags[{j}]: {exc}") from None
    if len(set(tags)) != len(tags):
        raise _bad(f"{where}.tags", "tags listed once each", tags)
    metadata = item.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _bad(f"{where}.metadata", "a JSON object", metadata)
    base = item.get("base")
    if base is not None:
        base = _base(base, f"{where}.base")
    files = None
    if verified:
        files = _files(_required(item, "files", where), f"{where}.files")
    return ManifestEntry(name, "/".join(folder_parts), tuple(tags), metadata, base, files)


def _base(base: object, where: str) -> dict[str, str]:
    if not isinstance(base, dict):
        raise _bad(where, "null or an object with name, fingerprint, architecture", base)
    fingerprint = _required(base, "fingerprint", where)
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise _bad(f"{where}.fingerprint", "a fingerprint (1-128 letters and digits)", fingerprint)
    out = {"fingerprint": fingerprint}
    for key in ("name", "architecture"):
        value = base.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            raise _bad(f"{where}.{key}", f"text of at most {_MAX_TEXT} characters", value)
        out[key] = value
    return out


def _files(files: object, where: str) -> dict[str, ExtractedFile]:
    if not isinstance(files, dict) or not files:
        raise _bad(where, "an object mapping each file's path to its sha256 and size", files)
    out = {}
    for path, info in files.items():
        try:
            parts = safe_relative_parts(path, f"{MANIFEST_NAME}: {where}")
        except UnsafeArchiveError as exc:
            raise ArchiveManifestError(str(exc)) from None
        if not parts:
            raise _bad(f"{where}", "file paths, not the folder itself", path)
        here = f"{where}[{path!r}]"
        if not isinstance(info, dict):
            raise _bad(here, "an object with sha256 and size", info)
        sha = _required(info, "sha256", here)
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise _bad(f"{here}.sha256", "64 lowercase hex digits", sha)
        size = _required(info, "size", here)
        if type(size) is not int or not 0 <= size < 2**63:
            raise _bad(f"{here}.size", "a byte count (a whole number from 0)", size)
        out["/".join(parts)] = ExtractedFile(sha, size)
    return out


def _check_folders_apart(entries: list[ManifestEntry]) -> None:
    """Each entry owns its folder: no folder twice, none inside another's."""
    folders = sorted((e.folder, i) for i, e in enumerate(entries))
    for (a, i), (b, j) in zip(folders, folders[1:]):
        if b == a or b.startswith(a + "/"):
            raise ArchiveManifestError(
                f"{MANIFEST_NAME}: adapters[{j}].folder {b!r} overlaps adapters[{i}].folder {a!r}; "
                f"each adapter needs a folder of its own"
            )


def _required(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ArchiveManifestError(f"{MANIFEST_NAME}: {where} has no {key!r}")
    return obj[key]


def _bad(where: str, expected: str, value: object) -> ArchiveManifestError:
    return ArchiveManifestError(f"{MANIFEST_NAME}: {where} must be {expected}, got {_show(value)}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past Python's digit limit, very deep nesting
        text = f"a {_kind(value)}"
    return f"{_kind(value)} {text[:60]}{'...' if len(text) > 60 else ''}"
