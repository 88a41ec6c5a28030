"""AdapterStore: many adapters on disk, versioned, verified, bound to their base.

Layout under the root:

    index.sqlite        names, versions, tags, manifests, leases (SQLiteIndex)
    blobs/ab/abcd...    file contents by SHA-256 (LocalBlobStore)

or, for a store many hosts share, the index on a PostgreSQL server (PostgresIndex)
and the blobs in a folder they all reach: AdapterStore("postgresql://...", blobs=FOLDER).

A version is a manifest (relative path -> blob) plus a summary; it never changes
once written. `put` hashes the files, leases their blobs, writes the blobs, then
records the version and ends the lease in one transaction: a crash before that
commit leaves no version and only unreferenced blobs, which `gc` removes.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterkit.errors import AdapterConfigError, AdapterError, BaseModelMismatchError
from adapterkit.files import sha256_file
from adapterkit.paths import cache_root
from adapterkit.store.archive import (
    MANIFEST_NAME,
    ArchiveListing,
    ExtractedArchive,
    ManifestEntry,
    extract_archive,
    manifest_bytes,
    read_manifest,
)
from adapterkit.store.blobs import BlobStore, LocalBlobStore, copy_blob, hash_blob
from adapterkit.store.errors import (
    AdapterNotInStoreError,
    ArchiveError,
    CorruptArchiveError,
    CorruptStoredFileError,
    StoreError,
    UnverifiedArchiveError,
)
from adapterkit.store.index import NewVersion, SQLiteIndex, StoredFile, StoreIndex, VersionRecord
from adapterkit.store.postgres_index import PostgresIndex, is_postgres_url
from adapterkit.store.refs import check_name, check_tag, parse_ref
from adapterkit.store.summary import CONFIG_NAME, BaseRef, FolderContents, read_folder

EXPORT_MANIFEST = MANIFEST_NAME


class BaseMismatchWarning(UserWarning):
    """An adapter was loaded into a base other than the one it was trained on."""


def default_store_root() -> Path:
    """`store/` under adapterkit's cache root (`$ADAPTERKIT_HOME`, `$XDG_CACHE_HOME/adapterkit`, ...)."""
    return cache_root() / "store"


@dataclass(frozen=True)
class CorruptFile:
    ref: str  # name@version
    path: str
    blob: str
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    files_checked: int
    corrupt: list[CorruptFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt

    @property
    def damaged_refs(self) -> list[str]:
        return sorted({c.ref for c in self.corrupt})


@dataclass(frozen=True)
class GcReport:
    blobs_deleted: int
    bytes_freed: int
    temporaries_removed: int


@dataclass(frozen=True)
class DiskUsage:
    versions: int
    names: int
    logical_bytes: int  # every version's files, as if each were a separate folder
    stored_bytes: int  # unique blobs those versions reference
    unreferenced_bytes: int  # blobs on disk nothing references (until `gc`)
    index_bytes: int
    full_copy_bytes: int | None  # one full base copy per version, where the base's size is known
    versions_with_known_base: int

    @property
    def dedupe_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def savings_vs_full_copies(self) -> float | None:
        if not self.full_copy_bytes or not self.stored_bytes:
            return None
        return self.full_copy_bytes / self.stored_bytes


class AdapterStore:
    """Versioned, content-addressed adapter storage. See the module docstring for the layout."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        index: StoreIndex | None = None,
        blobs: BlobStore | str | os.PathLike[str] | None = None,
        durable: bool = True,
        lease_ttl_s: float = 6 * 3600.0,
    ) -> None:
        """A store in folder `root` (SQLite index + blobs), or on a PostgreSQL server.

        `AdapterStore("postgresql://user@host/db", blobs="/shared/adapterkit/blobs")` keeps the
        index in PostgreSQL and the blobs in a folder (or any BlobStore) every host can reach.
        """
        if is_postgres_url(root):
            if blobs is None:
                raise StoreError("a postgresql:// store keeps its files elsewhere: pass blobs=FOLDER "
                                 "(a path every host can reach) or a BlobStore")
            self.url: str | None = str(root)
            index = index if index is not None else PostgresIndex(str(root))
            root = blobs if isinstance(blobs, (str, os.PathLike)) else getattr(blobs, "root", None)
            if root is None:
                raise StoreError("pass blobs=FOLDER, or a BlobStore with a `root` folder, for a postgresql:// store")
        else:
            self.url = None
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.root.mkdir(parents=True, exist_ok=True)
        if isinstance(blobs, (str, os.PathLike)):
            blobs = LocalBlobStore(blobs, durable=durable)
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobStore(self.root / "blobs", durable=durable)
        self.index: StoreIndex = index if index is not None else SQLiteIndex(self.root / "index.sqlite", durable=durable)
        self.lease_ttl_s = lease_ttl_s

    def __repr__(self) -> str:
        if self.url is not None:
            return f"AdapterStore({self.index.describe()!r}, blobs={str(self.root)!r})"  # type: ignore[attr-defined]
        return f"AdapterStore({str(self.root)!r})"

    # --- put ------------------------------------------------------------
    def put(self, source: Any, name: str, *, adapter_name: str = "default",
            metadata: Mapping[str, Any] | None = None, tags: Iterable[str] = ()) -> VersionRecord:
        """Store a PEFT folder (path) or one adapter of a model as the next version of `name`."""
        if isinstance(source, (str, os.PathLike)):
            return self.put_folder(source, name, metadata=metadata, tags=tags)
        return self.put_model(source, name, adapter_name=adapter_name, metadata=metadata, tags=tags)

    def put_folder(self, folder: str | os.PathLike[str], name: str, *,
                   metadata: Mapping[str, Any] | None = None, base: BaseRef | None = None,
                   tags: Iterable[str] = ()) -> VersionRecord:
        """Store a PEFT adapter folder as the next version of `name`, tagged with `tags`; returns its record.

        Every argument is checked before anything is written; the version and its tags commit together.
        """
        name, metadata, tags = _check_put_arguments(name, metadata, tags)
        contents = read_folder(folder)
        new = _new_version(name, contents, base, metadata, tags, digests=None)
        return self._store_versions([(new, contents.files)])[0]

    def put_model(self, model: Any, name: str, *, adapter_name: str = "default",
                  metadata: Mapping[str, Any] | None = None, tags: Iterable[str] = ()) -> VersionRecord:
        """Store adapter `adapter_name` of an AdapterModel; records its base's fingerprint and size."""
        name, metadata, tags = _check_put_arguments(name, metadata, tags)
        fingerprint = getattr(model, "base_fingerprint", None)
        base = None
        if fingerprint is not None:
            base = BaseRef(fingerprint.name, fingerprint.digest, fingerprint.architecture)
        with tempfile.TemporaryDirectory(prefix="adapterkit-put-") as tmp:
            model.save_pretrained(tmp, selected_adapters=[adapter_name])
            folder = Path(tmp)
            if not (folder / CONFIG_NAME).is_file() and (folder / adapter_name / CONFIG_NAME).is_file():
                folder = folder / adapter_name  # PEFT puts non-default adapters in a sub-folder
            record = self.put_folder(folder, name, metadata=metadata, base=base, tags=tags)
        if base is not None:
            self.index.record_base(base, _base_parameter_bytes(model))
        return record

    def _store_versions(self, versions: Sequence[tuple[NewVersion, Mapping[str, Path]]]) -> list[VersionRecord]:
        """Lease, write and commit: blobs first, then every version in one index transaction."""
        if not versions:
            return []
        sources: dict[str, Path] = {}
        for new, paths in versions:
            for entry in new.files:
                sources.setdefault(entry.blob, paths[entry.path])
        lease = self.index.begin_lease(set(sources), self.lease_ttl_s)
        try:
            for blob, path in sources.items():
                self.blobs.put_file(path, blob)
            return self.index.add_versions([new for new, _ in versions], lease=lease)
        except BaseException:
            self.index.release_lease(lease)
            raise

    # --- get ------------------------------------------------------------
    def resolve(self, ref: str) -> VersionRecord:
        """The version `ref` names: `name`, `name@3`, `name@latest` or `name@tag`."""
        name, selector = parse_ref(ref)
        return self.index.resolve(name, selector)

    def get(self, ref: str, destination: str | os.PathLike[str]) -> Path:
        """Write version `ref` as a PEFT folder at `destination` (new or empty); checks every checksum."""
        record = self.resolve(ref)
        dest = Path(destination)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} already exists and is not an empty folder; choose another destination")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            self._materialize(record, staging)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    def load_into(self, model: Any, ref: str, *, adapter_name: str | None = None, strict_base: bool = False,
                  is_trainable: bool = False, overwrite: bool = False) -> VersionRecord:
        """Load version `ref` into an AdapterModel as `adapter_name` (default: the store name).

        If the model's base differs from the one the adapter was trained on, warns naming
        both bases, or raises BaseModelMismatchError when `strict_base` is true.
        """
        record = self.resolve(ref)
        self._check_base(record, model, strict_base)
        target_name = adapter_name or re.sub(r"[^A-Za-z0-9_]", "_", record.name)
        with tempfile.TemporaryDirectory(prefix="adapterkit-get-") as tmp:
            self._materialize(record, Path(tmp))
            with warnings.catch_warnings():
                # Already warned above, naming the stored ref; the model would repeat it with a temp path.
                warnings.filterwarnings("ignore", message=r".*was trained on base")
                model.load_adapter(tmp, adapter_name=target_name, is_trainable=is_trainable, overwrite=overwrite)
        return record

    def _check_base(self, record: VersionRecord, model: Any, strict: bool) -> None:
        fingerprint = getattr(model, "base_fingerprint", None)
        if record.base is None or fingerprint is None or fingerprint.digest == record.base.fingerprint:
            return
        message = (
            f"{record.ref} was trained on {record.base.describe()}, but this model's base is "
            f"{fingerprint.describe()}; its outputs will be wrong. Load it into the base it was "
            f"trained on, or list matching adapters with `adapterkit store ls --base {fingerprint.digest}`."
        )
        if strict:
            raise BaseModelMismatchError(message)
        warnings.warn(message, BaseMismatchWarning, stacklevel=3)

    def _materialize(self, record: VersionRecord, folder: Path) -> None:
        for entry in self.index.files(record):
            target = folder / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                seen = copy_blob(self.blobs, entry.blob, target)
            except FileNotFoundError:
                self._raise_if_removed(record)
                raise CorruptStoredFileError(record.ref, entry.path, entry.blob, "its blob is missing") from None
            except (IsADirectoryError, PermissionError) as exc:
                raise CorruptStoredFileError(record.ref, entry.path, entry.blob,
                                             f"its blob cannot be read: {exc.strerror}") from None
            if seen != entry.blob:
                raise CorruptStoredFileError(record.ref, entry.path, entry.blob, f"contents hash to {seen[:12]}")

    def _raise_if_removed(self, record: VersionRecord) -> None:
        """A version removed (and collected) while we read it is gone, not corrupt."""
        try:
            current = self.index.resolve(record.name, record.version)
        except AdapterNotInStoreError:
            raise AdapterNotInStoreError(f"{record.ref} was removed from the store while being read") from None
        if current.id != record.id:  # pragma: no cover - versions are never renumbered
            raise StoreError(f"{record.ref} changed while being read")

    # --- list, remove, tag ----------------------------------------------
    def ls(self, name: str | None = None, *, base: str | None = None, tag: str | None = None,
           latest_only: bool = False) -> list[VersionRecord]:
        """Versions, ordered by name then version. `name` may be a glob; `base` is a name or fingerprint prefix."""
        return self.index.list_versions(name=name, base=base, tag=tag, latest_only=latest_only)

    def rm(self, ref: str) -> list[VersionRecord]:
        """Remove `name@3` (or `name@tag`, `name@latest`), or every version with a bare `name`.

        Blobs stay until `gc`; version numbers are never reused.
        """
        name, at, _ = ref.partition("@")
        if not at:
            return self.index.remove(check_name(name))
        record = self.resolve(ref)
        return self.index.remove(record.name, record.version)

    def tag(self, ref: str, tag: str) -> VersionRecord:
        """Point `tag` at version `ref` (moving it if it pointed elsewhere)."""
        check_tag(tag)
        record = self.resolve(ref)
        self.index.set_tag(record.name, tag, record.version)
        return self.index.resolve(record.name, record.version)

    def untag(self, name: str, tag: str) -> bool:
        return self.index.remove_tag(check_name(name), check_tag(tag))

    # --- integrity and space ----------------------------------------------
    def verify(self) -> VerifyReport:
        """Re-hash every referenced blob; report each damaged file with the adapters that hold it."""
        references = self.index.references()
        corrupt: list[CorruptFile] = []
        for blob, holders in references.items():
            try:
                seen = hash_blob(self.blobs, blob)
                problem = None if seen == blob else f"contents hash to {seen[:12]}"
            except FileNotFoundError:
                problem = "its blob is missing"
            except (IsADirectoryError, PermissionError) as exc:
                problem = f"its blob cannot be read: {exc.strerror}"
            if problem:
                corrupt.extend(CorruptFile(ref, path, blob, problem) for ref, path in holders)
        corrupt.sort(key=lambda c: (c.ref, c.path))
        return VerifyReport(len(references), sum(len(h) for h in references.values()), corrupt)

    def gc(self, grace_s: float = 60.0) -> GcReport:
        """Delete blobs no version references and no put in progress has leased.

        Blobs younger than `grace_s` are kept too, as a second guard for stores whose
        index and blobs live on different systems.
        """
        cutoff = time.time() - grace_s
        sizes = {info.sha256: info.size for info in self.blobs.iter_blobs() if info.modified <= cutoff}
        deleted = self.index.collect(sizes, self.blobs.delete)
        temporaries = self.blobs.remove_stale_temporaries(older_than=max(grace_s, 3600.0))
        return GcReport(len(deleted), sum(sizes[b] for b in deleted), temporaries)

    def du(self) -> DiskUsage:
        """Bytes stored against bytes the same versions would take as folders, and as full model copies."""
        records = self.index.list_versions()
        references = self.index.references()
        on_disk = {info.sha256: info.size for info in self.blobs.iter_blobs()}
        blob_sizes = {}
        logical = 0
        for blob, holders in references.items():
            size = on_disk.get(blob, 0)
            blob_sizes[blob] = size
            logical += size * len(holders)
        base_sizes = self.index.base_sizes()
        known = [base_sizes[r.base.fingerprint] for r in records if r.base and r.base.fingerprint in base_sizes]
        index_bytes = self.index.size_bytes()
        return DiskUsage(
            versions=len(records),
            names=len({r.name for r in records}),
            logical_bytes=logical,
            stored_bytes=sum(blob_sizes.values()),
            unreferenced_bytes=sum(s for b, s in on_disk.items() if b not in references),
            index_bytes=index_bytes,
            full_copy_bytes=sum(known) if known else None,
            versions_with_known_base=len(known),
        )

    def record_base(self, base: BaseRef, parameter_bytes: int) -> None:
        """Tell the store how big a full copy of `base` is (used by `du`); put_model does this itself."""
        self.index.record_base(base, parameter_bytes)

    # --- archives ------------------------------------------------------------
    def export(self, archive: str | os.PathLike[str], refs: Iterable[str] | None = None, *,
               name: str | None = None, base: str | None = None, tag: str | None = None) -> list[VersionRecord]:
        """Write versions as PEFT folders in a tar archive (`.tar.gz`/`.tgz` compresses); all if no refs/filters.

        The manifest (first member) records each file's SHA-256, and its own; see archive.py.
        """
        records = [self.resolve(r) for r in refs] if refs else self.ls(name, base=base, tag=tag)
        archive = Path(archive)
        entries: list[dict[str, Any]] = []
        for record in records:
            entries.append({
                "name": record.name, "version": record.version, "folder": f"{record.name}@{record.version}",
                "created_at": record.created_at, "tags": list(record.tags), "metadata": record.metadata,
                "base": None if record.base is None else vars(record.base),
                "files": {f.path: {"sha256": f.blob, "size": f.size} for f in self.index.files(record)},
            })
        manifest = manifest_bytes(entries)
        partial = archive.with_name(f".{archive.name}.partial")
        compress = archive.name.endswith((".tar.gz", ".tgz"))
        with tempfile.TemporaryDirectory(prefix="adapterkit-export-") as tmp:
            try:
                with open(partial, "wb") as raw:
                    # No file name and no time in the gzip header: the same versions give the same bytes.
                    stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
                    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                        _add_bytes(tar, MANIFEST_NAME, manifest, time.time())
                        for record, entry in zip(records, entries):
                            folder = Path(tmp) / entry["folder"]
                            self._materialize(record, folder)
                            for rel in sorted(entry["files"]):
                                _add_bytes(tar, f"{entry['folder']}/{rel}", (folder / rel).read_bytes(),
                                           record.created_at)
                            shutil.rmtree(folder)
                    if compress:
                        stream.close()
                os.replace(partial, archive)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        return records

    def import_(self, archive: str | os.PathLike[str], *, tags: bool = True,
                allow_unverified: bool = False) -> list[VersionRecord]:
        """Add every adapter of an archive made by `export` as new versions, keeping metadata and tags.

        All or nothing: every member, the manifest and every file's SHA-256 are checked, and every
        folder read as an adapter, before anything is written; then all versions commit in one
        index transaction. Archives without per-file checksums (from adapterkit before the
        version 2 manifest, or a plain tar of PEFT folders, each imported under its folder's
        name) are refused with UnverifiedArchiveError unless `allow_unverified` is true; they
        still get every other check.
        """
        archive = Path(archive)
        if not archive.is_file():
            raise FileNotFoundError(f"archive {archive} does not exist (or is not a file)")
        with tempfile.TemporaryDirectory(prefix="adapterkit-import-") as tmp:
            extracted, entries = extract_archive(
                archive, Path(tmp), lambda listing: _archive_entries(archive, listing, allow_unverified))
            _check_digests(archive, extracted, entries)
            versions = [self._import_version(archive, extracted, entry, tags) for entry in entries]
            records = self._store_versions(versions)
        return records

    def _import_version(self, archive: Path, extracted: ExtractedArchive, entry: ManifestEntry,
                        tags: bool) -> tuple[NewVersion, Mapping[str, Path]]:
        folder = extracted.root / entry.folder
        try:
            metadata = _check_metadata(entry.metadata)
            contents = read_folder(folder)
        except AdapterError as exc:
            text = str(exc).replace(str(extracted.root) + os.sep, "")
            raise CorruptArchiveError(f"{archive}: {entry.folder!r} is not a valid adapter folder: {text}") from None
        digests = {rel: extracted.files[f"{entry.folder}/{rel}"].sha256 for rel in contents.files}
        base = BaseRef(**entry.base) if entry.base else None
        new = _new_version(entry.name, contents, base, metadata, entry.tags if tags else (), digests)
        return new, contents.files


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def _archive_entries(archive: Path, listing: ArchiveListing, allow_unverified: bool) -> list[ManifestEntry]:
    """The adapters to import, from the manifest (or the folders of a plain tar), with the archive's
    listing checked against it; runs before anything is extracted."""
    if listing.manifest is not None:
        manifest = read_manifest(listing.manifest)
        if not manifest.verified and not allow_unverified:
            raise UnverifiedArchiveError(
                f"{archive} was exported by an older adapterkit: its manifest carries no SHA-256 per file, "
                f"so damage inside it cannot be detected. Re-export it with this adapterkit, or import it "
                f"anyway with allow_unverified=True (`store import --allow-unverified`)"
            )
        _check_listing(archive, listing, manifest.entries)
        return manifest.entries
    if not allow_unverified:
        raise UnverifiedArchiveError(
            f"{archive} has no {MANIFEST_NAME}, so no SHA-256 to check its files against. Export it with "
            f"`adapterkit store export`, or import it anyway with allow_unverified=True "
            f"(`store import --allow-unverified`), which names each adapter after its top-level folder"
        )
    folders = sorted({rel.rpartition("/")[0] for rel in listing.sizes if rel.count("/") == 1
                      and rel.endswith("/" + CONFIG_NAME)})
    if not folders:
        raise ArchiveError(f"{archive} holds no adapter folders (no */{CONFIG_NAME} and no {MANIFEST_NAME})")
    entries = []
    for folder in folders:
        name = folder.partition("@")[0]
        try:
            check_name(name)
        except StoreError as exc:
            raise ArchiveError(f"{archive}: top-level folder {folder!r} cannot name an adapter: {exc}") from None
        entries.append(ManifestEntry(name, folder, (), {}, None, None))
    return entries


def _check_listing(archive: Path, listing: ArchiveListing, entries: list[ManifestEntry]) -> None:
    """A verified manifest lists exactly the archive's files, with their sizes; an old one names
    folders the archive has."""
    if any(entry.files is None for entry in entries):
        for entry in entries:
            if not any(rel.startswith(entry.folder + "/") for rel in listing.sizes):
                raise ArchiveError(f"{archive}: the manifest names folder {entry.folder!r}, which the archive lacks")
        return
    listed = {MANIFEST_NAME}
    for entry in entries:
        assert entry.files is not None
        for rel, expected in entry.files.items():
            path = f"{entry.folder}/{rel}"
            listed.add(path)
            if path not in listing.sizes:
                raise CorruptArchiveError(f"{archive}: {path!r} is in the manifest but not in the archive")
            if listing.sizes[path] != expected.size:
                raise CorruptArchiveError(
                    f"{archive}: {path!r} is {listing.sizes[path]} bytes, the manifest says {expected.size}: "
                    f"the archive is damaged. Nothing was imported; export it again"
                )
    extra = sorted(set(listing.sizes) - listed)
    if extra:
        raise CorruptArchiveError(f"{archive}: {extra[0]!r} is in the archive but not in its manifest")


def _check_digests(archive: Path, extracted: ExtractedArchive, entries: list[ManifestEntry]) -> None:
    """Every extracted file hashes to the SHA-256 its (verified) manifest records."""
    for entry in entries:
        for rel, expected in (entry.files or {}).items():
            found = extracted.files[f"{entry.folder}/{rel}"]
            if found != expected:
                raise CorruptArchiveError(
                    f"{archive}: {entry.folder}/{rel!r} does not match the manifest (SHA-256 {found.sha256[:12]}, "
                    f"recorded {expected.sha256[:12]}): the archive is damaged. Nothing was imported; export it again"
                )


def _check_put_arguments(name: str, metadata: Mapping[str, Any] | None,
                         tags: Iterable[str]) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """Every argument of a put, checked before anything is read or written."""
    if isinstance(tags, str):
        raise AdapterConfigError(f"tags must be a list of tags, got the string {tags!r}; write [{tags!r}]")
    checked_tags = tuple(dict.fromkeys(check_tag(t) for t in tags))
    return check_name(name), _check_metadata(metadata), checked_tags


def _new_version(name: str, contents: FolderContents, base: BaseRef | None, metadata: dict[str, Any],
                 tags: Sequence[str], digests: Mapping[str, str] | None) -> NewVersion:
    """A version of `contents`; `digests` (rel path -> SHA-256) spares hashing files already hashed."""
    files = []
    for rel, path in contents.files.items():
        if digests is not None:
            files.append(StoredFile(rel, digests[rel], path.stat().st_size))
        else:
            digest, size = sha256_file(path)
            files.append(StoredFile(rel, digest, size))
    return NewVersion(name, tuple(files), contents.summary, contents.base or base, metadata, tuple(tags))


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise AdapterConfigError(f"metadata must be a mapping (a dict), got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise AdapterConfigError(f"metadata must be JSON-serialisable (no NaN, no deep nesting): {exc}") from None


def _base_parameter_bytes(model: Any) -> int:
    """Bytes of the base's own parameters (adapter weights left out): one full copy of the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n)
