"""Checksums, corruption reports, and garbage collection."""

from __future__ import annotations

import pytest
from store_helpers import folder_bytes, gc_once_the_holder_is_gone

from adapterkit.errors import CorruptAdapterFileError
from adapterkit.store import CorruptStoredFileError


def _blob_of(store, ref, path):
    record = store.resolve(ref)
    return next(f.blob for f in store.index.files(record) if f.path == path)


def test_verify_names_every_adapter_holding_a_damaged_file(store, make_folder, tmp_path):
    store.put(make_folder(seed=1), "one")
    store.put(make_folder(seed=1), "same-weights")  # shares both blobs with "one"
    store.put(make_folder(seed=2), "two")
    assert store.verify().ok
    blob = _blob_of(store, "one", "adapter_model.safetensors")
    path = store.blobs.path(blob)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    report = store.verify()
    assert not report.ok
    assert report.damaged_refs == ["one@1", "same-weights@1"]
    assert {(c.ref, c.path) for c in report.corrupt} == {
        ("one@1", "adapter_model.safetensors"), ("same-weights@1", "adapter_model.safetensors")}
    assert report.blobs_checked == 3 and report.files_checked == 6


def test_get_of_a_corrupt_blob_raises_naming_adapter_and_file(store, make_folder, tmp_path):
    store.put(make_folder(), "bad")
    store.blobs.path(_blob_of(store, "bad", "adapter_model.safetensors")).write_bytes(b"garbage")
    with pytest.raises(CorruptStoredFileError, match=r"bad@1: stored file 'adapter_model.safetensors'") as info:
        store.get("bad", tmp_path / "out")
    assert isinstance(info.value, CorruptAdapterFileError)
    assert (info.value.ref, info.value.path) == ("bad@1", "adapter_model.safetensors")
    assert not (tmp_path / "out").exists()  # nothing half-written left behind


def test_a_missing_blob_is_reported_as_corruption(store, make_folder, tmp_path):
    store.put(make_folder(), "gone")
    store.blobs.delete(_blob_of(store, "gone", "adapter_config.json"))
    with pytest.raises(CorruptStoredFileError, match="missing"):
        store.get("gone", tmp_path / "out")
    assert [c.problem for c in store.verify().corrupt] == ["its blob is missing"]


def test_gc_removes_only_unreferenced_blobs(store, make_folder, tmp_path):
    keep = make_folder(seed=1)
    store.put(keep, "keep")
    store.put(make_folder(seed=2), "drop")
    assert len(list(store.blobs.iter_blobs())) == 3  # shared config + two weights
    store.rm("drop")
    assert store.du().unreferenced_bytes > 0
    report = store.gc(grace_s=0)
    assert report.blobs_deleted == 1 and report.bytes_freed > 0
    assert store.verify().ok and store.du().unreferenced_bytes == 0
    store.get("keep", tmp_path / "out")


def test_gc_keeps_young_blobs_within_the_grace_period(store, make_folder):
    store.put(make_folder(), "young")
    store.rm("young")
    assert store.gc(grace_s=3600).blobs_deleted == 0
    assert store.gc(grace_s=0).blobs_deleted == 2


def test_gc_never_deletes_a_blob_leased_by_a_put_in_progress(store, make_folder):
    folder = make_folder()
    store.put(folder, "x")
    store.rm("x")
    blobs = [b.sha256 for b in store.blobs.iter_blobs()]
    lease = store.index.begin_lease(blobs, ttl=60)  # as a concurrent put of the same files would
    assert store.gc(grace_s=0).blobs_deleted == 0
    store.index.release_lease(lease)
    assert store.gc(grace_s=0).blobs_deleted == len(blobs)


def test_gc_ignores_leases_of_exited_processes(store, open_store, make_folder, tmp_path):
    import multiprocessing

    store.put(make_folder(), "x")
    store.rm("x")
    blobs = [b.sha256 for b in store.blobs.iter_blobs()]
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_lease_and_exit, args=(open_store, tmp_path / "store", blobs))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert gc_once_the_holder_is_gone(store) == len(blobs)


def _lease_and_exit(open_store, root, blobs):
    open_store(root).index.begin_lease(blobs, ttl=3600)


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "bit flip":
        path.write_bytes(data[:10] + bytes([data[10] ^ 0x04]) + data[11:])
    elif how == "truncated":
        path.write_bytes(data[:-7])
    elif how == "padded":
        path.write_bytes(data + b"\0")
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    elif how == "replaced by a folder":
        path.unlink()
        path.mkdir()


DAMAGE = ["bit flip", "truncated", "padded", "emptied", "missing", "replaced by a folder"]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("recovery", ["re-put", "remove then re-put (as the error says)"])
def test_putting_an_adapter_again_heals_its_damaged_blobs(store, make_folder, tmp_path, damage, recovery):
    source = make_folder(seed=5)
    store.put(source, "heal")
    store.put(make_folder(seed=6), "other")  # shares the config blob
    for path in ("adapter_model.safetensors", "adapter_config.json"):
        blob_path = store.blobs.path(_blob_of(store, "heal", path))
        _damage(blob_path, damage)
        with pytest.raises(CorruptStoredFileError) as info:
            store.get("heal", tmp_path / f"broken-{path}")
        assert "remove and re-put" in str(info.value)
        if damage == "replaced by a folder":
            blob_path.rmdir()  # a folder is not something a put can replace; verify's report is the fix
        if recovery.startswith("remove"):
            store.rm("heal")
        record = store.put(source, "heal")
        assert store.verify().ok, f"{damage} of {path} survived {recovery}"
        assert folder_bytes(store.get(record.ref, tmp_path / f"healed-{path}")) == folder_bytes(source)
    assert folder_bytes(store.get("other", tmp_path / "other")) == folder_bytes(make_folder(seed=6))


def test_an_intact_blob_is_not_rewritten_on_re_put(store, make_folder):
    source = make_folder()
    store.put(source, "same")
    blob_path = store.blobs.path(_blob_of(store, "same", "adapter_model.safetensors"))
    inode = blob_path.stat().st_ino
    store.put(source, "same")
    assert blob_path.stat().st_ino == inode  # checked, found intact, kept
