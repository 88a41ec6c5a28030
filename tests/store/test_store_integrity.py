"""Checksums, corruption reports, and garbage collection."""

from __future__ import annotations

import pytest

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


def test_gc_ignores_leases_of_exited_processes(store, make_folder):
    import multiprocessing

    store.put(make_folder(), "x")
    store.rm("x")
    blobs = [b.sha256 for b in store.blobs.iter_blobs()]
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_lease_and_exit, args=(store.root, blobs))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert store.gc(grace_s=0).blobs_deleted == len(blobs)


def _lease_and_exit(root, blobs):
    from adapterkit.store import AdapterStore

    AdapterStore(root).index.begin_lease(blobs, ttl=3600)
