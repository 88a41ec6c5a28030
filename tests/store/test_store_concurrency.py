"""Several real processes at once, and a real SIGKILL in the middle of `put`."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_helpers import folder_bytes, gc_once_the_holder_is_gone, write_peft_folder

import adapterkit
from adapterkit.store import AdapterNotInStoreError, AdapterStore

WORKERS = 4
ROUNDS = 40


def _digest(folder: Path) -> str:
    return hashlib.sha256(repr(sorted(folder_bytes(folder).items())).encode()).hexdigest()


def _worker(open_store, root: str, sources: list[str], worker: int, results) -> None:
    rng = random.Random(worker)
    store = open_store(root)
    mine: list[tuple[str, str]] = []  # (ref, digest of the folder put)
    scratch = Path(root).parent / f"scratch-{worker}"
    try:
        for round_ in range(ROUNDS):
            source = Path(rng.choice(sources))
            name = "shared" if round_ % 2 else f"own-{worker}"
            record = store.put(source, name, metadata={"worker": worker, "round": round_})
            mine.append((record.ref, _digest(source)))
            if len(mine) > 1 and rng.random() < 0.3:  # remove one of ours so gc has something to collect
                ref, _ = mine.pop(rng.randrange(len(mine)))
                store.rm(ref)
            if worker == 0 and round_ % 3 == 0:
                store.gc(grace_s=0)
            ref, digest = rng.choice(mine)
            out = store.get(ref, scratch / f"{round_}")
            if _digest(out) != digest:
                raise AssertionError(f"{ref} came back different from what was put")
        results.put((worker, mine, None))
    except BaseException as exc:  # report to the parent instead of dying silently
        results.put((worker, mine, repr(exc)))


@pytest.mark.slow  # end to end in real processes
def test_concurrent_put_get_rm_gc_never_corrupt_or_lose_a_version(tmp_path, open_store):
    sources = [str(write_peft_folder(tmp_path / f"src{i}", i % 3, r=2 + i % 2)) for i in range(6)]
    root = tmp_path / "store"
    open_store(root)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(open_store, str(root), sources, w, results)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [(w, err) for w, _, err in outcomes if err]
    assert not errors, errors

    store = open_store(root)
    store.gc(grace_s=0)
    listed = {r.ref for r in store.ls()}
    expected = {ref: digest for _, mine, _ in outcomes for ref, digest in mine}
    assert set(expected) == listed  # every kept version is there, nothing else
    for ref, digest in expected.items():
        assert _digest(store.get(ref, tmp_path / "check" / ref.replace("@", "_"))) == digest
    assert store.verify().ok
    # version numbers were handed out once each: shared got WORKERS * ROUNDS // 2 puts in all
    shared_versions = sorted(r.version for r in store.ls("shared"))
    assert len(set(shared_versions)) == len(shared_versions)
    assert max(shared_versions) <= WORKERS * ((ROUNDS + 1) // 2)
    _assert_index_intact(open_store, root)


PAUSED_PUT = Path(__file__).with_name("paused_put.py")


def _start_paused_put(open_store, root: Path, folder: Path, name: str, marker: Path) -> subprocess.Popen:
    """A real `put` in a child process, stopped between its blob writes and its index commit."""
    src = str(Path(adapterkit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    url = [open_store(root).url] if open_store.backend == "postgres" else []
    return subprocess.Popen([sys.executable, str(PAUSED_PUT), str(root), str(folder), name, str(marker), *url],
                            env=env, stdin=subprocess.PIPE)


def _assert_index_intact(open_store, root: Path) -> None:
    if open_store.backend == "sqlite":
        conn = sqlite3.connect(root / "index.sqlite")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow  # end to end in real processes
def test_a_put_killed_before_its_commit_leaves_no_version_and_a_consistent_store(tmp_path, open_store):
    root = tmp_path / "store"
    store = open_store(root)
    kept = write_peft_folder(tmp_path / "kept", 1)
    store.put(kept, "victim")  # victim@1 exists before the crash
    doomed = write_peft_folder(tmp_path / "doomed", 2)
    marker = tmp_path / "paused"
    child = _start_paused_put(open_store, root, doomed, "victim", marker)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the put exited before reaching the pause"
            assert time.monotonic() < deadline, "the put never reached the pause"
            time.sleep(0.02)
        # The blobs of the doomed version are on disk now; only the index commit is missing.
        assert len(list(store.blobs.iter_blobs())) == 3
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    after = open_store(root)
    assert [r.ref for r in after.ls()] == ["victim@1"]
    try:
        after.resolve("victim@2")
        raise AssertionError("the killed put's version is visible")
    except AdapterNotInStoreError:
        pass
    assert after.verify().ok
    assert folder_bytes(after.get("victim", tmp_path / "out")) == folder_bytes(kept)
    # The dead put's lease protects nothing: its orphaned weights blob is collected.
    assert gc_once_the_holder_is_gone(after) == 1
    assert after.verify().ok
    assert after.put(doomed, "victim").version == 2
    _assert_index_intact(open_store, root)


@pytest.mark.slow  # end to end in real processes
def test_gc_in_another_process_spares_the_blobs_of_a_put_in_progress(tmp_path, open_store):
    root = tmp_path / "store"
    store = open_store(root)
    folder = write_peft_folder(tmp_path / "again", 3)
    store.put(folder, "gone")
    store.rm("gone")  # its blobs are now unreferenced: exactly what gc collects
    marker = tmp_path / "paused"
    child = _start_paused_put(open_store, root, folder, "back", marker)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        # The put found the blobs already present and is about to reference them.
        assert store.gc(grace_s=0).blobs_deleted == 0
        assert len(list(store.blobs.iter_blobs())) == 2
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert gc_once_the_holder_is_gone(store) == 2  # the holder is dead now


def test_threads_sharing_one_store_object(tmp_path, open_store):
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(tmp_path / "store")
    folders = [write_peft_folder(tmp_path / f"t{i}", i) for i in range(4)]

    def work(i: int) -> list[str]:
        refs = [store.put(folders[i], f"thread-{i % 2}").ref for _ in range(5)]
        for ref in refs:
            store.get(ref, tmp_path / "out" / f"{i}-{ref.replace('@', '_')}")
        return refs

    with ThreadPoolExecutor(4) as pool:
        refs = [ref for chunk in pool.map(work, range(4)) for ref in chunk]
    assert sorted(refs) == sorted(r.ref for r in store.ls()) and len(set(refs)) == 20
    assert store.verify().ok


def _open_index_files(root: Path) -> list[str]:
    """Paths of this process's open descriptors onto the store's SQLite files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root / "index.sqlite")):
            found.append(target)
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")


@needs_proc
def test_a_dropped_sqlite_store_closes_its_files_at_once(tmp_path, make_folder):
    """sqlite3 connections sit in a reference cycle; left to the cyclic gc, one stayed open across
    a fork and the forked writers' commits were lost (the concurrency test above caught it)."""
    import gc

    root = tmp_path / "store"
    store = AdapterStore(root)
    store.put(make_folder(), "x")
    assert _open_index_files(root)
    was_enabled = gc.isenabled()
    gc.disable()  # only reference counting: what happens between two cyclic collections
    try:
        del store
        assert _open_index_files(root) == []
    finally:
        if was_enabled:
            gc.enable()


@needs_proc
def test_a_forked_child_inherits_no_open_sqlite_file(tmp_path, make_folder):
    root = tmp_path / "store"
    store = AdapterStore(root)
    store.put(make_folder(), "x")  # the parent keeps using it
    assert _open_index_files(root)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=lambda: results.put(_open_index_files(root)))
    child.start()
    assert results.get(timeout=60) == []
    child.join(30)
    assert store.put(make_folder(), "x").version == 2  # reopened on next use
