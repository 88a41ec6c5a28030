"""Put, get, list, tag, remove: the store's everyday operations on real folders."""

from __future__ import annotations

import json
import sqlite3

import pytest
from store_helpers import FINGERPRINT_A, FINGERPRINT_B, folder_bytes, write_peft_folder

from adapterkit.errors import (
    AdapterConfigError,
    AdapterConfigNotFoundError,
    AdapterFolderNotFoundError,
    AdapterWeightsNotFoundError,
    CorruptAdapterFileError,
)
from adapterkit.store import AdapterNotInStoreError, AdapterStore, InvalidStoreRefError, default_store_root


def test_put_then_get_returns_identical_files(store, make_folder, tmp_path):
    source = make_folder()
    record = store.put(source, "math")
    assert record.ref == "math@1"
    out = store.get("math", tmp_path / "out")
    assert folder_bytes(out) == folder_bytes(source)


def test_summary_is_read_from_config_and_header(store, make_folder):
    record = store.put(make_folder(r=8, alpha=32, layers=3, hidden=16, base=FINGERPRINT_A), "s")
    summary = record.summary
    assert (summary.method, summary.rank, summary.alpha) == ("LORA", 8, 32.0)
    assert summary.targets == ["q_proj", "v_proj"]
    assert summary.parameter_count == 3 * 2 * (8 * 16 + 16 * 8)
    assert record.base.name == "tiny-base-a" and record.base.fingerprint == "a" * 32
    assert record.base.architecture == "LlamaForCausalLM"


def test_summary_matches_a_folder_written_by_peft(store, tmp_path):
    peft = pytest.importorskip("peft")
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.v_proj, self.out = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 4)

        def forward(self, x):
            return self.out(self.q_proj(x) + self.v_proj(x))

    torch.manual_seed(0)
    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "peft")
    trainable, _ = model.get_nb_trainable_parameters()
    record = store.put(tmp_path / "peft", "from-peft")
    assert record.summary.parameter_count == trainable
    assert (record.summary.rank, record.summary.alpha, record.summary.targets) == (4, 8.0, ["q_proj", "v_proj"])
    assert record.base is None  # PEFT records no fingerprint
    assert folder_bytes(store.get("from-peft", tmp_path / "back")) == folder_bytes(tmp_path / "peft")


def test_identical_files_are_stored_once(store, make_folder):
    first = make_folder(seed=7)
    second = make_folder(seed=7)
    other = make_folder(seed=8)
    for i, folder in enumerate([first, second, other]):
        store.put(folder, f"a{i}")
    blobs = list(store.blobs.iter_blobs())
    # one config (identical in all three) + two distinct weights files
    assert len(blobs) == 3
    usage = store.du()
    assert usage.logical_bytes > usage.stored_bytes
    assert usage.dedupe_ratio == pytest.approx(usage.logical_bytes / usage.stored_bytes)


def test_versions_are_immutable_and_numbers_never_reused(store, make_folder, tmp_path):
    one, two = make_folder(), make_folder()
    assert store.put(one, "x").version == 1
    assert store.put(two, "x").version == 2
    assert store.resolve("x@latest").version == 2
    assert store.resolve("x").version == 2
    store.rm("x@2")
    assert store.resolve("x").version == 1
    assert store.put(two, "x").version == 3  # not 2 again
    assert folder_bytes(store.get("x@1", tmp_path / "o1")) == folder_bytes(one)
    with pytest.raises(AdapterNotInStoreError, match="x@2 is not in the store; x has versions @1, @3"):
        store.resolve("x@2")


def test_tags_move_and_resolve(store, make_folder):
    store.put(make_folder(), "t")
    store.put(make_folder(), "t")
    store.tag("t@1", "prod")
    assert store.resolve("t@prod").version == 1
    assert store.resolve("t@1").tags == ("prod",)
    store.tag("t@2", "prod")  # moves
    assert store.resolve("t@prod").version == 2
    assert store.resolve("t@1").tags == ()
    assert [r.ref for r in store.ls(tag="prod")] == ["t@2"]
    assert store.untag("t", "prod")
    with pytest.raises(AdapterNotInStoreError):
        store.resolve("t@prod")


def test_rm_bare_name_removes_every_version_and_its_tags(store, make_folder):
    store.put(make_folder(), "r")
    store.put(make_folder(), "r")
    store.tag("r@1", "keep")
    removed = store.rm("r")
    assert [r.ref for r in removed] == ["r@1", "r@2"]
    assert store.ls() == []
    with pytest.raises(AdapterNotInStoreError, match="no adapter named 'r'"):
        store.rm("r")


def test_ls_filters_by_name_base_tag_and_latest(store, make_folder):
    store.put(make_folder(base=FINGERPRINT_A), "alpha")
    store.put(make_folder(base=FINGERPRINT_A), "alpha")
    store.put(make_folder(base=FINGERPRINT_B), "beta")
    store.put(make_folder(), "gamma")
    assert [r.ref for r in store.ls()] == ["alpha@1", "alpha@2", "beta@1", "gamma@1"]
    assert [r.ref for r in store.ls(base="tiny-base-a")] == ["alpha@1", "alpha@2"]
    assert [r.ref for r in store.ls(base="bbbb")] == ["beta@1"]  # fingerprint prefix
    assert [r.ref for r in store.ls("alpha")] == ["alpha@1", "alpha@2"]
    assert [r.ref for r in store.ls("*a")] == ["alpha@1", "alpha@2", "beta@1", "gamma@1"]
    assert [r.ref for r in store.ls("g*")] == ["gamma@1"]
    assert [r.ref for r in store.ls(latest_only=True)] == ["alpha@2", "beta@1", "gamma@1"]


def test_metadata_round_trips(store, make_folder):
    meta = {"train_data_sha256": "ab" * 32, "metrics": {"exact_match": 0.82}}
    store.put(make_folder(), "m", metadata=meta)
    assert store.resolve("m").metadata == meta
    with pytest.raises(ValueError, match="JSON"):
        store.put(make_folder(), "m", metadata={"bad": object()})
    assert [r.ref for r in store.ls("m")] == ["m@1"]


def test_folders_with_sub_adapters_keep_their_layout(store, tmp_path):
    root = write_peft_folder(tmp_path / "multi", 1)
    write_peft_folder(root / "second", 2, r=2)
    record = store.put(root, "multi")
    assert record.summary.adapters == ["", "second"]
    assert record.summary.rank == 4  # the root adapter's
    assert folder_bytes(store.get("multi", tmp_path / "back")) == folder_bytes(root)


def test_bad_folders_are_refused_with_typed_errors(store, tmp_path, make_folder):
    with pytest.raises(AdapterFolderNotFoundError):
        store.put(tmp_path / "nope", "n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterConfigNotFoundError):
        store.put(tmp_path / "empty", "n")
    no_weights = make_folder()
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterWeightsNotFoundError):
        store.put(no_weights, "n")
    truncated = make_folder()
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CorruptAdapterFileError, match="truncated"):
        store.put(truncated, "n")
    assert store.ls() == [] and list(store.blobs.iter_blobs()) == []


@pytest.mark.parametrize("ref", ["", "a@b@c", "../x", "x@0", "x@1.5", "with space", "x@-1", "a//b"])
def test_malformed_refs_are_refused(store, ref):
    with pytest.raises(InvalidStoreRefError):
        store.resolve(ref)


def test_get_refuses_a_non_empty_destination(store, make_folder, tmp_path):
    store.put(make_folder(), "g")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        store.get("g", tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_index_is_sqlite_in_wal_mode(tmp_path):
    store = AdapterStore(tmp_path / "s")
    conn = sqlite3.connect(store.root / "index.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_root_follows_adapterkit_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERKIT_HOME", str(tmp_path / "home"))
    assert default_store_root() == tmp_path / "home" / "store"
    monkeypatch.delenv("ADAPTERKIT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_root() == tmp_path / "xdg" / "adapterkit" / "store"
    assert AdapterStore().root == tmp_path / "xdg" / "adapterkit" / "store"


def test_store_reopens_with_its_contents(tmp_path, make_folder, open_store):
    open_store(tmp_path / "s").put(make_folder(), "persist", metadata={"k": 1})
    again = open_store(tmp_path / "s")
    assert again.resolve("persist").metadata == {"k": 1}
    assert json.loads(json.dumps(again.du().versions)) == 1


def _non_ascii_digits() -> list[str]:
    """Every character Python calls a digit or numeric that is not 0-9 (superscripts, Arabic-Indic, ...)."""
    import sys

    return [chr(c) for c in range(128, sys.maxunicode + 1) if chr(c).isdigit() or chr(c).isnumeric()]


def test_only_ascii_digits_make_a_version(store, make_folder, tmp_path):
    """`a@²` raised a raw ValueError and `a@١` silently meant a@1: every such ref is now a typed error."""
    store.put(make_folder(), "a")  # a@1 exists, so silently addressing it would show
    digits = _non_ascii_digits()
    assert len(digits) > 1000 and "²" in digits and "١" in digits
    refs = []
    for d in digits:
        refs += [f"a@{d}", f"a@1{d}", f"a@{d}1", f"a@{d * 3}"]
    refs += ["a@" + "9" * n for n in (19, 100, 5000)]  # past 64 bits, past int()'s digit limit
    refs += ["a@ 1", "a@1 ", "a@+1", "a@1_0", "a@0x1", "a@1e0", "a@1.0", "a@", "a@@1", "a@1\n", "\uff41@1"]
    kinds = {}
    for ref in refs:
        try:
            store.resolve(ref)
        except InvalidStoreRefError:
            kinds["typed"] = kinds.get("typed", 0) + 1
            continue
        except Exception as exc:  # the point is to see any other type
            raise AssertionError(f"{ref!r} raised {type(exc).__name__}: {exc}") from None
        raise AssertionError(f"{ref!r} resolved to a version")
    assert kinds == {"typed": len(refs)}
    for ref in ("a@²", "a@١"):  # every entry point that takes a ref
        for call in (lambda r: store.get(r, tmp_path / "o"), store.rm, lambda r: store.tag(r, "t"),
                     lambda r: store.load_into(object(), r)):
            with pytest.raises(InvalidStoreRefError, match="ASCII digits"):
                call(ref)
    assert [r.ref for r in store.ls()] == ["a@1"] and store.resolve("a@1").tags == ()


def test_long_ascii_versions_still_resolve_or_say_not_found(store, make_folder):
    store.put(make_folder(), "v")
    assert store.resolve("v@0001").version == 1
    with pytest.raises(AdapterNotInStoreError):
        store.resolve("v@" + "9" * 18)


@pytest.mark.parametrize("tags", [["latest"], ["ok", "latest"], ["bad tag"], ["7"], ["²"], "prod", [""]])
def test_put_checks_its_tags_before_storing_anything(store, make_folder, tags):
    before = (store.ls(), sorted(b.sha256 for b in store.blobs.iter_blobs()))
    with pytest.raises((InvalidStoreRefError, AdapterConfigError)):
        store.put(make_folder(), "t", tags=tags)
    assert (store.ls(), sorted(b.sha256 for b in store.blobs.iter_blobs())) == before


def test_put_with_tags_commits_version_and_tags_together(store, make_folder):
    record = store.put(make_folder(), "t", tags=["prod", "canary", "prod"])
    assert record.tags == ("canary", "prod")
    assert store.resolve("t@canary").version == record.version == 1


def test_ls_globs_match_as_shell_globs(store, make_folder):
    for name in ("alpha", "beta", "gamma", "a.b", "a_b", "org/x"):
        store.put(make_folder(), name)
    cases = {"[ab]*": ["a.b", "a_b", "alpha", "beta"], "?eta": ["beta"], "a.*": ["a.b"], "a_*": ["a_b"],
             "[^ab]*": ["gamma", "org/x"], "org/*": ["org/x"], "*[!]*": []}
    for pattern, expected in cases.items():
        assert [r.name for r in store.ls(pattern)] == expected, pattern
