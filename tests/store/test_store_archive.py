"""Export to and import from tar archives of PEFT folders."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from store_helpers import FINGERPRINT_A, folder_bytes, write_peft_folder

from adapterkit.store import UnverifiedArchiveError


def test_export_then_import_keeps_files_metadata_tags_and_base(store, open_store, make_folder, tmp_path):
    first = make_folder(base=FINGERPRINT_A)
    store.put(first, "a", metadata={"metrics": {"em": 0.5}})
    store.put(make_folder(), "a")
    store.put(make_folder(), "b")
    store.tag("a@1", "prod")
    exported = store.export(tmp_path / "all.tar")
    assert [r.ref for r in exported] == ["a@1", "a@2", "b@1"]

    with tarfile.open(tmp_path / "all.tar") as tar:
        names = tar.getnames()
    assert "a@1/adapter_config.json" in names and "a@1/adapter_model.safetensors" in names

    other = open_store(tmp_path / "other")
    imported = other.import_(tmp_path / "all.tar")
    assert [r.ref for r in imported] == ["a@1", "a@2", "b@1"]
    got = other.resolve("a@prod")
    assert got.version == 1 and got.metadata == {"metrics": {"em": 0.5}}
    assert got.base.fingerprint == "a" * 32
    assert folder_bytes(other.get("a@1", tmp_path / "out")) == folder_bytes(first)
    assert other.verify().ok


def test_export_selected_refs_compressed(store, open_store, make_folder, tmp_path):
    store.put(make_folder(), "x")
    store.put(make_folder(), "y")
    store.export(tmp_path / "x.tar.gz", ["x"])
    other = open_store(tmp_path / "other")
    assert [r.ref for r in other.import_(tmp_path / "x.tar.gz")] == ["x@1"]


def test_import_appends_new_versions_to_existing_names(store, make_folder, tmp_path):
    store.put(make_folder(), "n")
    store.export(tmp_path / "n.tar")
    assert [r.ref for r in store.import_(tmp_path / "n.tar")] == ["n@2"]
    assert len(list(store.blobs.iter_blobs())) == 2  # same contents: no new blobs


def test_plain_tars_of_peft_folders_import_only_when_unverified_is_allowed(store, tmp_path):
    write_peft_folder(tmp_path / "plain" / "my-adapter", 1)
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        tar.add(tmp_path / "plain" / "my-adapter", arcname="my-adapter")
    with pytest.raises(UnverifiedArchiveError, match="allow_unverified"):
        store.import_(tmp_path / "plain.tar")
    assert store.ls() == [] and list(store.blobs.iter_blobs()) == []
    assert [r.ref for r in store.import_(tmp_path / "plain.tar", allow_unverified=True)] == ["my-adapter@1"]


def test_archives_from_the_old_exporter_need_allow_unverified(store, make_folder, tmp_path):
    """Version 1 manifests (no per-file SHA-256) still import, but only when asked to."""
    source = make_folder(base=FINGERPRINT_A)
    manifest = {"format": "adapterkit-store-export", "version": 1, "adapters": [
        {"name": "old", "version": 4, "folder": "old@4", "created_at": 1.0, "tags": ["prod"],
         "metadata": {"k": 1}, "base": None}]}
    with tarfile.open(tmp_path / "v1.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="old@4")
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("adapterkit-export.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnverifiedArchiveError, match="older adapterkit"):
        store.import_(tmp_path / "v1.tar.gz")
    assert store.ls() == []
    (record,) = store.import_(tmp_path / "v1.tar.gz", allow_unverified=True)
    assert (record.ref, record.tags, record.metadata) == ("old@1", ("prod",), {"k": 1})
    assert folder_bytes(store.get("old", tmp_path / "out")) == folder_bytes(source)


def test_the_manifest_records_every_file_sha256_and_its_own(store, make_folder, tmp_path):
    store.put(make_folder(), "m")
    store.export(tmp_path / "m.tar")
    with tarfile.open(tmp_path / "m.tar") as tar:
        assert tar.getnames()[0] == "adapterkit-export.json"  # first: a cut archive still has it
        manifest = json.loads(tar.extractfile("adapterkit-export.json").read())
    assert manifest["version"] == 2 and len(manifest["sha256"]) == 64
    files = manifest["adapters"][0]["files"]
    record = store.resolve("m")
    assert files == {f.path: {"sha256": f.blob, "size": f.size} for f in store.index.files(record)}


def test_export_is_byte_for_byte_repeatable(store, make_folder, tmp_path, monkeypatch):
    store.put(make_folder(), "r")
    monkeypatch.setattr("time.time", lambda: 1_700_000_000.0)
    store.export(tmp_path / "one.tar.gz")
    store.export(tmp_path / "two.tar.gz")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()


def test_an_archive_whose_listing_disagrees_with_its_manifest_is_refused_before_extracting(
        store, make_folder, tmp_path, monkeypatch):
    """A compressed archive can hold far more than it weighs: refuse it on its listing, not after
    writing what it unpacks to."""
    from adapterkit.store import CorruptArchiveError
    from adapterkit.store import archive as archive_module

    store.put(make_folder(), "a")
    store.export(tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    big = bytes(32 * 1024 * 1024)
    copies = []
    real_copy = archive_module._copy_member
    monkeypatch.setattr(archive_module, "_copy_member", lambda *a: copies.append(a[3]) or real_copy(*a))
    weights = next(m.name for m, _ in members if m.name.endswith(".safetensors"))
    for label, changed in [
        ("an extra member", members + [(tarfile.TarInfo("a@1/huge.bin"), big)]),
        ("a member larger than listed", [(m, big if m.name == weights else d) for m, d in members]),
    ]:
        with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tar:
            for info, data in changed:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        assert (tmp_path / "bomb.tar.gz").stat().st_size < len(big) // 100
        with pytest.raises(CorruptArchiveError, match="not in its manifest|the manifest says"):
            store.import_(tmp_path / "bomb.tar.gz")
        assert copies == [], label
    assert [r.ref for r in store.ls()] == ["a@1"]
