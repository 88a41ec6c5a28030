"""AdapterStore: many adapters on disk, versioned, verified, bound to their base.

Layout under the root:

    index.sqlite        names, versions, tags, manifests, leases (SQLiteIndex)
    blobs/ab/abcd...    file contents by SHA-256 (LocalBlobStore)

A version is a manifest (relative path -> blob) plus a summary; it never changes
once written. `put` hashes the files, leases their blobs, writes the blobs, then
records the version and ends the lease in one transaction: a crash before that
commit leaves no version and only unreferenced blobs, which `gc` removes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterkit.errors import AdapterConfigError, BaseModelMismatchError
from adapterkit.store.blobs import BlobStore, LocalBlobStore, copy_blob, hash_blob, sha256_file
from adapterkit.store.errors import AdapterNotInStoreError, CorruptStoredFileError, StoreError
from adapterkit.store.index import SQLiteIndex, StoredFile, StoreIndex, VersionRecord
from adapterkit.store.refs import check_name, check_tag, parse_ref
from adapterkit.store.summary import CONFIG_NAME, BaseRef, read_folder

# Test hook: when set to a path, `put` creates that file once its blobs are written
# and then sleeps before recording the version, so a test can kill it there.
PAUSE_BEFORE_COMMIT_ENV = "ADAPTERKIT_STORE_TEST_PAUSE_BEFORE_COMMIT"
EXPORT_MANIFEST = "adapterkit-export.json"
_EXPORT_FORMAT = "adapterkit-store-export"


class BaseMismatchWarning(UserWarning):
    """An adapter was loaded into a base other than the one it was trained on."""


def default_store_root() -> Path:
    """`$ADAPTERKIT_HOME/store`, else `$XDG_CACHE_HOME/adapterkit/store` (`~/.cache/adapterkit/store`)."""
    home = os.environ.get("ADAPTERKIT_HOME")
    if home:
        return Path(home).expanduser() / "store"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "adapterkit" / "store"


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
        blobs: BlobStore | None = None,
        durable: bool = True,
        lease_ttl_s: float = 6 * 3600.0,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobStore(self.root / "blobs", durable=durable)
        self.index: StoreIndex = index if index is not None else SQLiteIndex(self.root / "index.sqlite", durable=durable)
        self.lease_ttl_s = lease_ttl_s

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    # --- put ------------------------------------------------------------
    def put(self, source: Any, name: str, *, adapter_name: str = "default",
            metadata: Mapping[str, Any] | None = None) -> VersionRecord:
        """Store a PEFT folder (path) or one adapter of a model as the next version of `name`."""
        if isinstance(source, (str, os.PathLike)):
            return self.put_folder(source, name, metadata=metadata)
        return self.put_model(source, name, adapter_name=adapter_name, metadata=metadata)

    def put_folder(self, folder: str | os.PathLike[str], name: str, *,
                   metadata: Mapping[str, Any] | None = None, base: BaseRef | None = None) -> VersionRecord:
        """Store a PEFT adapter folder as the next version of `name`; returns its record."""
        check_name(name)
        metadata = _check_metadata(metadata)
        contents = read_folder(folder)
        stored = []
        for rel, path in contents.files.items():
            digest, size = sha256_file(path)
            stored.append((path, StoredFile(rel, digest, size)))
        lease = self.index.begin_lease({f.blob for _, f in stored}, self.lease_ttl_s)
        try:
            for path, entry in stored:
                self.blobs.put_file(path, entry.blob)
            _pause_for_tests()
            return self.index.add_version(
                name, [f for _, f in stored], contents.summary, contents.base or base, metadata, lease=lease
            )
        except BaseException:
            self.index.release_lease(lease)
            raise

    def put_model(self, model: Any, name: str, *, adapter_name: str = "default",
                  metadata: Mapping[str, Any] | None = None) -> VersionRecord:
        """Store adapter `adapter_name` of an AdapterModel; records its base's fingerprint and size."""
        check_name(name)
        fingerprint = getattr(model, "base_fingerprint", None)
        base = None
        if fingerprint is not None:
            base = BaseRef(fingerprint.name, fingerprint.digest, fingerprint.architecture)
            self.index.record_base(base, _base_parameter_bytes(model))
        with tempfile.TemporaryDirectory(prefix="adapterkit-put-") as tmp:
            model.save_pretrained(tmp, selected_adapters=[adapter_name])
            folder = Path(tmp)
            if not (folder / CONFIG_NAME).is_file() and (folder / adapter_name / CONFIG_NAME).is_file():
                folder = folder / adapter_name  # PEFT puts non-default adapters in a sub-folder
            return self.put_folder(folder, name, metadata=metadata, base=base)

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
        corrupt = []
        for blob, holders in references.items():
            try:
                seen = hash_blob(self.blobs, blob)
                problem = None if seen == blob else f"contents hash to {seen[:12]}"
            except FileNotFoundError:
                problem = "its blob is missing"
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
        index_bytes = sum(p.stat().st_size for p in self.root.glob("index.sqlite*") if p.is_file())
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
        """Write versions as PEFT folders in a tar archive (`.tar.gz`/`.tgz` compresses); all if no refs/filters."""
        records = [self.resolve(r) for r in refs] if refs else self.ls(name, base=base, tag=tag)
        archive = Path(archive)
        mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
        manifest = {"format": _EXPORT_FORMAT, "version": 1, "adapters": []}
        partial = archive.with_name(f".{archive.name}.partial")
        with tempfile.TemporaryDirectory(prefix="adapterkit-export-") as tmp:
            try:
                with tarfile.open(partial, mode) as tar:
                    for record in records:
                        folder = f"{record.name}@{record.version}"
                        self._materialize(record, Path(tmp) / folder)
                        tar.add(Path(tmp) / folder, arcname=folder)
                        shutil.rmtree(Path(tmp) / folder)
                        manifest["adapters"].append({
                            "name": record.name, "version": record.version, "folder": folder,
                            "created_at": record.created_at, "tags": list(record.tags),
                            "metadata": record.metadata,
                            "base": None if record.base is None else vars(record.base),
                        })
                    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
                    info = tarfile.TarInfo(EXPORT_MANIFEST)
                    info.size, info.mtime = len(data), int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                os.replace(partial, archive)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        return records

    def import_(self, archive: str | os.PathLike[str], *, tags: bool = True) -> list[VersionRecord]:
        """Put every adapter of an archive made by `export` (as new versions), keeping metadata and tags.

        An archive without a manifest is read as top-level PEFT folders named after their folder.
        """
        archive = Path(archive)
        if not archive.is_file():
            raise FileNotFoundError(f"archive {archive} does not exist")
        imported = []
        with tempfile.TemporaryDirectory(prefix="adapterkit-import-") as tmp:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")  # refuses absolute paths, `..`, links out
            except tarfile.TarError as exc:
                raise StoreError(f"{archive} is not a readable tar archive: {exc}") from None
            for entry in _archive_entries(Path(tmp)):
                base = BaseRef(**entry["base"]) if entry.get("base") else None
                record = self.put_folder(Path(tmp) / entry["folder"], entry["name"],
                                         metadata=entry.get("metadata") or {}, base=base)
                if tags:
                    for tag in entry.get("tags", []):
                        self.index.set_tag(record.name, check_tag(tag), record.version)
                imported.append(self.index.resolve(record.name, record.version))
        return imported


def _archive_entries(root: Path) -> list[dict]:
    manifest_path = root / EXPORT_MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _EXPORT_FORMAT:
            raise StoreError(f"{EXPORT_MANIFEST} in the archive is not an adapterkit export manifest")
        entries = manifest["adapters"]
        for entry in entries:
            folder = (root / entry["folder"]).resolve()
            if root.resolve() not in folder.parents:
                raise StoreError(f"archive manifest names a folder outside the archive: {entry['folder']!r}")
        return entries
    folders = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file())
    if not folders:
        raise StoreError("the archive holds no adapter folders (no */adapter_config.json and no manifest)")
    return [{"name": f.partition("@")[0], "folder": f} for f in folders]


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise AdapterConfigError(f"metadata must be a mapping (a dict), got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as exc:
        raise AdapterConfigError(f"metadata must be JSON-serialisable: {exc}") from None


def _base_parameter_bytes(model: Any) -> int:
    """Bytes of the base's own parameters (adapter weights left out): one full copy of the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n)


def _pause_for_tests() -> None:
    marker = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    if marker:
        Path(marker).touch()
        time.sleep(600)
