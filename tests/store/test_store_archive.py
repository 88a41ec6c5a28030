"""Export to and import from tar archives of PEFT folders."""

from __future__ import annotations

import io
import tarfile

import pytest
from store_helpers import FINGERPRINT_A, folder_bytes, write_peft_folder

from adapterkit.store import AdapterStore, StoreError


def test_export_then_import_keeps_files_metadata_tags_and_base(store, make_folder, tmp_path):
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

    other = AdapterStore(tmp_path / "other")
    imported = other.import_(tmp_path / "all.tar")
    assert [r.ref for r in imported] == ["a@1", "a@2", "b@1"]
    got = other.resolve("a@prod")
    assert got.version == 1 and got.metadata == {"metrics": {"em": 0.5}}
    assert got.base.fingerprint == "a" * 32
    assert folder_bytes(other.get("a@1", tmp_path / "out")) == folder_bytes(first)
    assert other.verify().ok


def test_export_selected_refs_compressed(store, make_folder, tmp_path):
    store.put(make_folder(), "x")
    store.put(make_folder(), "y")
    store.export(tmp_path / "x.tar.gz", ["x"])
    other = AdapterStore(tmp_path / "other")
    assert [r.ref for r in other.import_(tmp_path / "x.tar.gz")] == ["x@1"]


def test_import_appends_new_versions_to_existing_names(store, make_folder, tmp_path):
    store.put(make_folder(), "n")
    store.export(tmp_path / "n.tar")
    assert [r.ref for r in store.import_(tmp_path / "n.tar")] == ["n@2"]
    assert len(list(store.blobs.iter_blobs())) == 2  # same contents: no new blobs


def test_import_reads_plain_tars_of_peft_folders(store, tmp_path):
    write_peft_folder(tmp_path / "plain" / "my-adapter", 1)
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        tar.add(tmp_path / "plain" / "my-adapter", arcname="my-adapter")
    assert [r.ref for r in store.import_(tmp_path / "plain.tar")] == ["my-adapter@1"]


def test_import_refuses_archives_that_escape_their_folder(store, tmp_path):
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        data = b"{}"
        info = tarfile.TarInfo("../escaped.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StoreError, match="not a readable tar archive"):
        store.import_(tmp_path / "evil.tar")
    assert not (tmp_path / "escaped.json").exists()
    assert store.ls() == []
