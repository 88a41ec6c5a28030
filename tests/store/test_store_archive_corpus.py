"""A generated corpus of hostile and corrupt archives: each is refused, with nothing written.

Families (all generated from one real export, seeded):
  links     symbolic and hard links (inside, outside, a chain past PATH_MAX), devices, FIFOs,
            contiguous and sparse files, at the start, middle and end, .tar and .tar.gz
  escapes   absolute paths, `..`, drive letters, backslashes, over-long and too-deep paths,
            control characters, duplicates, a file under a file, as files and as folders
  truncate  the .tar.gz cut at many offsets, the .tar cut at every block boundary and more
  bitflip   one bit flipped at many offsets of the .tar.gz and of the .tar
  manifest  every manifest field missing or of a wrong type, bad tags, names, folders, file
            lists, huge and deep values, non-JSON, a stale self-checksum; bad entries first,
            in the middle and last, so a partial import would show

For each: a typed error (ArchiveError), the store's full state unchanged (every index row,
every file under its root, the WAL's size), the temporary folder empty, and nothing new
anywhere under the test's folder. Counts are printed (`pytest -s`) and asserted.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import random
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from store_helpers import FINGERPRINT_A, write_peft_folder

from adapterkit.errors import AdapterError
from adapterkit.store import (
    AdapterStore,
    ArchiveError,
    ArchiveManifestError,
    CorruptArchiveError,
    UnsafeArchiveError,
)

SEED = 8
MANIFEST = "adapterkit-export.json"


# --- the corpus's source: one real export ---------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A real export of three versions (tags, metadata, a base, a nested name, a sub-adapter)."""
    tmp = tmp_path_factory.mktemp("corpus-source")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: 1_700_000_000.25)  # fixed times in headers and manifest
        store = AdapterStore(tmp / "store")
        store.put(write_peft_folder(tmp / "f1", 1, base=FINGERPRINT_A), "a", metadata={"em": 0.5})
        store.put(write_peft_folder(tmp / "f2", 2), "a", tags=["prod"])
        multi = write_peft_folder(tmp / "f3", 3, r=2)
        write_peft_folder(multi / "second", 4, r=2)
        store.put(multi, "org/b", metadata={"nested": {"k": [1, 2]}})
        store.export(tmp / "all.tar")
        store.export(tmp / "all.tar.gz")
    tar_bytes = (tmp / "all.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        end_of_data = tar.offset + 2 * tarfile.BLOCKSIZE  # past the end-of-archive marker
        header_offsets = [m.offset for m, _ in members]
    return {
        "tar": tar_bytes, "gz": (tmp / "all.tar.gz").read_bytes(), "members": members,
        "manifest": json.loads(members[0][1]), "end_of_data": end_of_data, "header_offsets": header_offsets,
    }


def _pack(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool) -> bytes:
    raw = io.BytesIO()
    stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    if gz:
        stream.close()
    return raw.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def _canonical_sha256(body: dict) -> str:
    """The manifest's self-checksum as archive.py documents it (re-implemented, not imported)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _with_manifest(src: dict, manifest: object, *, reseal: bool = True, raw: bytes | None = None,
                   gz: bool = False) -> bytes:
    """The source archive with its manifest replaced (and, by default, its self-checksum recomputed,
    so the checks of each field are what refuses it, not the checksum)."""
    if raw is None:
        if reseal and isinstance(manifest, dict):
            body = {k: v for k, v in manifest.items() if k != "sha256"}
            manifest = {**body, "sha256": _canonical_sha256(body)}
        raw = json.dumps(manifest).encode()
    members = [_file(MANIFEST, raw)] + [(copy.copy(m), d) for m, d in src["members"][1:]]
    return _pack(members, gz)


# --- state and the check every corpus item gets --------------------------------------
def _state(store: AdapterStore) -> tuple:
    """Every index row (and, for SQLite, the WAL's size) and every file under the store's root."""
    if store.url is not None:
        conn = store.index._connection()  # type: ignore[attr-defined]
        rows = [(table, conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall())
                for table in ("names", "versions", "files", "tags", "leases", "bases")]
        wal_size = None
    else:
        conn = sqlite3.connect(store.root / "index.sqlite")
        try:
            rows = list(conn.iterdump())
        finally:
            conn.close()
        wal = store.root / "index.sqlite-wal"
        wal_size = wal.stat().st_size if wal.exists() else None
    files = {
        p.relative_to(store.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.root.rglob("*")) if p.is_file() and not p.name.startswith("index.sqlite")
    }
    return rows, files, wal_size


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


class Corpus:
    """Imports each archive into one store with contents, checking that nothing changes."""

    def __init__(self, tmp_path: Path, monkeypatch, open_store=AdapterStore) -> None:
        self.tmp_path = tmp_path
        self.open_store = open_store
        self.store = open_store(tmp_path / "store")
        self.store.put(write_peft_folder(tmp_path / "existing", 99), "a")  # imports would append a@2...
        self.store.tag("a@1", "prod")
        self.scratch = tmp_path / "scratch"
        self.scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(self.scratch))
        (tmp_path / "outside").mkdir()
        self.archive_dir = tmp_path / "corpus"
        self.archive_dir.mkdir()
        self.before = _state(self.store)
        self.tree = _tree(tmp_path) - {"corpus/archive.tar", "corpus/archive.tar.gz"}
        self.tried = self.refused = self.changed = 0
        self.errors: dict[str, int] = {}

    def attempt(self, data: bytes, gz: bool, allow_unverified: bool = False):
        """(records, None) if the archive imported, (None, error) if it was refused."""
        path = self.archive_dir / ("archive.tar.gz" if gz else "archive.tar")
        path.write_bytes(data)
        self.tried += 1
        try:
            return self.store.import_(path, allow_unverified=allow_unverified), None
        except AdapterError as exc:
            return None, exc
        finally:
            path.unlink()

    def refuse(self, data: bytes, gz: bool, expected: type[Exception] = ArchiveError, label: str = "",
               allow_unverified: bool = False, mentions: str | None = None) -> Exception:
        imported, error = self.attempt(data, gz, allow_unverified)
        if error is None:
            raise AssertionError(f"{label}: imported {[r.ref for r in imported]} instead of refusing")
        self.check_refusal(error, expected, label, mentions)
        return error

    def check_refusal(self, error: Exception, expected: type[Exception], label: str, mentions: str | None) -> None:
        assert isinstance(error, expected), f"{label}: {type(error).__name__}: {error}"
        if mentions is not None:
            assert mentions in str(error), f"{label}: {error}"
        assert "\n" not in str(error)
        self.refused += 1
        self.errors[type(error).__name__] = self.errors.get(type(error).__name__, 0) + 1
        self.assert_unchanged(label)

    def assert_unchanged(self, label: str) -> None:
        after = _state(self.store)
        if after != self.before:
            self.changed += 1
            raise AssertionError(f"{label}: the store changed")
        assert list(self.scratch.iterdir()) == [], f"{label}: temporary files left behind"
        assert _tree(self.tmp_path) - {"corpus/archive.tar", "corpus/archive.tar.gz"} == self.tree, (
            f"{label}: something was written outside the store")

    def report(self, family: str) -> None:
        print(f"\ncorpus {family}: {self.tried} archives tried, {self.refused} refused, "
              f"{self.changed} with anything written; errors {self.errors}")


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    """On SQLite: the index is only written after every check has passed, so the families that
    stop inside the archive reader run once; the manifest family and the control run on both."""
    return Corpus(tmp_path, monkeypatch)


@pytest.fixture
def corpus_on_each_backend(tmp_path, monkeypatch, open_store) -> Corpus:
    return Corpus(tmp_path, monkeypatch, open_store)


def _positions(members: list, extra: list) -> list[list]:
    """`extra` inserted first, in the middle, and last."""
    middle = len(members) // 2
    return [extra + members, members[:middle] + extra + members[middle:], members + extra]


def _members(src: dict) -> list:
    return [(copy.copy(m), d) for m, d in src["members"]]


# --- families ------------------------------------------------------------------
def _path_max_chain() -> list:
    """The symlink chain that walked tarfile's data filter out of its folder (CVE-2025-4517 style)."""
    steps = []
    comp = "d" * 247
    path = ""
    for i in range(16):
        link = f"{path}{'l' * (i + 1)}"
        steps.append(_special(f"{path}{comp}", tarfile.DIRTYPE))
        steps.append(_special(link, tarfile.SYMTYPE, comp))
        path = f"{path}{comp}/"
    steps.append(_special("escape", tarfile.SYMTYPE, "/".join(["l" * (i + 1) for i in range(16)]) + "/.." * 16))
    steps.append(_file("escape/outside-file", b"pwned"))
    return steps


LINKS = [
    ("symlink out, absolute", lambda o: [_special("a@1/evil", tarfile.SYMTYPE, "/etc/passwd")]),
    ("symlink out, relative", lambda o: [_special("a@1/evil", tarfile.SYMTYPE, f"../../{o}/x")]),
    ("symlink inside", lambda o: [_special("a@1/alias.json", tarfile.SYMTYPE, "adapter_config.json")]),
    ("symlink folder then write through", lambda o: [_special("sub", tarfile.SYMTYPE, o),
                                                     _file("sub/planted", b"x")]),
    ("hard link inside", lambda o: [_special("a@1/copy.json", tarfile.LNKTYPE, "a@1/adapter_config.json")]),
    ("hard link out", lambda o: [_special("a@1/passwd", tarfile.LNKTYPE, "/etc/passwd")]),
    ("character device", lambda o: [_special("a@1/null", tarfile.CHRTYPE)]),
    ("block device", lambda o: [_special("a@1/sda", tarfile.BLKTYPE)]),
    ("fifo", lambda o: [_special("a@1/pipe", tarfile.FIFOTYPE)]),
    ("contiguous file", lambda o: [(_file("a@1/contig", b"data")[0], b"data")]),
    ("sparse file", lambda o: [_special("a@1/sparse", tarfile.GNUTYPE_SPARSE)]),
    ("unknown type", lambda o: [_special("a@1/odd", b"Z")]),
    ("symlink chain past PATH_MAX", lambda o: _path_max_chain()),
]


def test_links_devices_and_special_members_are_refused(source, corpus):
    outside = str(corpus.tmp_path / "outside")
    for label, build in LINKS:
        extra = build(outside)
        if label == "contiguous file":
            extra[0][0].type = tarfile.CONTTYPE
        for where, members in zip(("first", "middle", "last"), _positions(_members(source), extra)):
            for gz in (False, True):
                # allow_unverified: the refusal must not lean on the manifest's checksums
                corpus.refuse(_pack(members, gz), gz, UnsafeArchiveError, f"{label} ({where}, gz={gz})",
                              allow_unverified=True)
    corpus.report("links")
    assert corpus.tried == corpus.refused == len(LINKS) * 6 and corpus.changed == 0


ESCAPES = [
    "/abs-file", "{outside}/abs-into-outside", "../x", "../../outside/x", "a@1/../../x", "./../x",
    "a@1/./x", "a@1//x", "C:/x", "C:x", "c:\\x", "a@1\\..\\..\\x", "\\\\server\\share\\x", "a@1/x:stream",
    "a@1/" + "x" * 256, "/".join(["d"] * 33) + "/f", "a" * 1100, "a@1/\x1b[31mred", "a@1/tab\there",
    "a@1/\x7f", "a@1/\udcff-not-utf8", "..", "a@1/..",
]


def test_paths_that_escape_or_cannot_be_written_are_refused(source, corpus):
    outside = str(corpus.tmp_path / "outside")
    count = 0
    for template in ESCAPES:
        name = template.replace("{outside}", outside)
        for kind in ("file", "folder"):
            extra = [_file(name, b"{}") if kind == "file" else _special(name, tarfile.DIRTYPE)]
            for where, members in zip(("first", "middle", "last"), _positions(_members(source), extra)):
                for gz in (False, True):
                    corpus.refuse(_pack(members, gz), gz, UnsafeArchiveError, f"{name!r} as {kind} ({where})",
                                  allow_unverified=True)
                    count += 1
    # A second copy of a file would replace the first after the checks; a file cannot hold files.
    for label, extra in [("duplicate", [_file("a@1/adapter_config.json", b"{}")]),
                         ("file under a file", [_file("a@1/adapter_config.json/x", b"{}")]),
                         ("folder over a file", [_special("a@1/adapter_config.json", tarfile.DIRTYPE)])]:
        for gz in (False, True):
            corpus.refuse(_pack(_members(source) + extra, gz), gz, UnsafeArchiveError, label, allow_unverified=True)
            count += 1
    corpus.report("escapes")
    assert corpus.tried == corpus.refused == count == (len(ESCAPES) * 12 + 6) and corpus.changed == 0


def test_truncated_archives_are_refused_at_every_offset_tried(source, corpus):
    rng = random.Random(SEED)
    gz = source["gz"]
    gz_offsets = sorted(set(range(0, 64)) | set(rng.sample(range(64, len(gz)), 120)) | {len(gz) - k for k in range(1, 9)})
    for cut in gz_offsets:
        corpus.refuse(gz[:cut], True, CorruptArchiveError if cut else ArchiveError, f"tar.gz cut at {cut}")
    tar = source["tar"]
    # Every block boundary (a cut between members looks like a shorter, valid archive) and
    # random offsets, up to the end of the end-of-archive marker; past it only zero padding goes.
    end = source["end_of_data"]
    tar_offsets = sorted(set(range(0, end, tarfile.BLOCKSIZE)) | set(rng.sample(range(end), 80)) | {end - 1})
    for cut in tar_offsets:
        corpus.refuse(tar[:cut], False, ArchiveError, f"tar cut at {cut}")
    corpus.report("truncate")
    assert corpus.tried == corpus.refused == len(gz_offsets) + len(tar_offsets) and corpus.changed == 0


def _reads_the_same(source: dict, key: str, flipped: bytes, offset: int) -> bool:
    """True if no reader can tell the flipped archive from the original.

    .tar.gz: it still decompresses to exactly the same tar (the flip hit the gzip header's MTIME,
    XFL or OS bytes or an ignored flag bit, or a deflate padding bit). .tar: the flip hit a
    header's checksum field where tarfile reads the same number (a leading zero turned into a
    space, the NUL into a space, a byte after the NUL).
    """
    if key == "gz":
        try:
            return gzip.decompress(flipped) == source["tar"]
        except (OSError, EOFError, zlib.error):
            return False
    return any(148 <= offset - h < 156 for h in source["header_offsets"])


def _imported_view(store: AdapterStore, records) -> list:
    view = []
    for record in records:
        files = {f.path: f.blob for f in store.index.files(record)}
        view.append((record.name, record.tags, record.metadata, record.base, files))
    return view


def test_one_flipped_bit_never_imports_changed_contents(source, corpus, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("clean")
    clean_store = AdapterStore(elsewhere / "store")
    (elsewhere / "clean.tar").write_bytes(source["tar"])
    clean = _imported_view(clean_store, clean_store.import_(elsewhere / "clean.tar"))
    rng = random.Random(SEED)
    harmless = 0
    cases = []
    for key, gz in (("gz", True), ("tar", False)):
        data = source[key]
        offsets = sorted(set(rng.sample(range(len(data)), 200)) | set(range(0, 12)) | {len(data) - k for k in range(1, 9)})
        if not gz:
            offsets = sorted(set(offsets) | {h + k for h in source["header_offsets"] for k in (0, 100, 124, 148, 154, 155, 257)})
        cases += [(key, gz, data, offset) for offset in offsets]
    for key, gz, data, offset in cases:
        flipped = bytearray(data)
        bit = rng.randrange(8)
        flipped[offset] ^= 1 << bit
        label = f"{key} bit {bit} of byte {offset}"
        imported, error = corpus.attempt(bytes(flipped), gz)
        if error is not None:
            corpus.check_refusal(error, ArchiveError, label, None)
            continue
        # Imported: acceptable only for a byte no reader looks at, and only identical to a clean import.
        assert _reads_the_same(source, key, bytes(flipped), offset), f"{label}: imported a meaningful flip"
        assert _imported_view(corpus.store, imported) == clean, f"{label}: imported changed contents"
        harmless += 1
        corpus.store = _reset(corpus)
    print(f"\ncorpus bitflip: {len(cases)} flips, {corpus.refused} refused, {harmless} that no reader can "
          f"see (ignored header bytes) imported identically, 0 imported changed contents")
    corpus.report("bitflip")
    assert corpus.tried == len(cases) == corpus.refused + harmless and corpus.changed == 0


def _reset(corpus: Corpus) -> AdapterStore:
    """Back to the corpus store's starting state after a (harmless) import."""
    root = corpus.store.root
    corpus.store.index.close()
    shutil.rmtree(root)
    fresh = AdapterStore(root)
    fresh.put(write_peft_folder(corpus.tmp_path / "existing", 99), "a")
    fresh.tag("a@1", "prod")
    corpus.before = _state(fresh)
    return fresh


WRONG_VALUES = [None, True, 0, -1, 1.5, 10**30, "", "x", [], ["x"], {}, {"k": 1}]
# Values from the pools above that are right for their field (skipped: they would import).
VALID_ENTRY_VALUES = {
    "name": ["x"], "tags": [[], ["x"]], "metadata": [{}, {"k": 1}, None], "base": [None],
    "created_at": [0, 1.5, 10**30],
}


def _manifest_mutations(manifest: dict) -> list[tuple[str, dict | None, bytes | None, str | None]]:
    """(label, manifest, raw bytes instead, text the error must mention)."""
    out: list[tuple[str, dict | None, bytes | None, str | None]] = []
    for raw in [b"", b"\xff\xfe\x00", b"[]", b'"text"', b"1", b"null", b"{", b"[" * 100_000 + b"]" * 100_000,
                b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, b" " * (17 * 1024 * 1024)]:
        out.append((f"raw {raw[:12]!r}... ({len(raw)} bytes)", None, raw, MANIFEST))
    for key in ("format", "version", "adapters", "sha256"):
        bad = copy.deepcopy(manifest)
        del bad[key]
        out.append((f"no {key}", bad, None, key if key != "sha256" else "sha256"))
        for value in WRONG_VALUES:
            if key == "adapters" and value == []:
                continue  # an empty export is valid
            bad = copy.deepcopy(manifest)
            bad[key] = value
            out.append((f"{key}={value!r}", bad, None, None))
    bad = copy.deepcopy(manifest)
    bad["version"] = 3
    out.append(("a newer format version", bad, None, "newer adapterkit"))
    entry_values = {
        "name": ["bad name", "../x", "a" * 300, "a@1", "²", ""],
        "folder": ["../x", "/abs", "C:/x", "a@1\\x", "zzz@9", "", "."],
        "version": [0, -1, 1.5, "1", True, 10**30],
        "created_at": ["x", -1, float("inf"), float("nan"), [1]],
        "tags": ["prod", ["latest"], ["bad tag"], ["prod", "prod"], [1], ["²"], [None], {"prod": 1}],
        "metadata": [[], "x", 1, True],
        "base": ["x", [], 1, {}, {"fingerprint": 1}, {"fingerprint": "zz-!"}, {"fingerprint": "a" * 32, "name": 1},
                 {"fingerprint": "a" * 32, "architecture": "x" * 2000}],
        "files": [{}, [], "x", {"adapter_config.json": "x"}, {"../x": {"sha256": "0" * 64, "size": 1}}],
    }
    for index in range(len(manifest["adapters"])):  # a bad first, middle and last entry
        where = f"adapters[{index}]"
        for key in ("name", "folder", "files"):
            bad = copy.deepcopy(manifest)
            del bad["adapters"][index][key]
            out.append((f"{where} without {key}", bad, None, f"{where} has no '{key}'"))
        for key, values in entry_values.items():
            # The generic wrong types on the middle entry; each field's own bad values on all three.
            for value in list(values) + (WRONG_VALUES if index == 1 else []):
                if any(type(value) is type(v) and value == v for v in VALID_ENTRY_VALUES.get(key, ())):
                    continue
                bad = copy.deepcopy(manifest)
                bad["adapters"][index][key] = value
                # A well-formed folder that is not in the archive is caught by the file check instead.
                mentions = None if key == "folder" and isinstance(value, str) else where
                out.append((f"{where}.{key}={value!r:.40}", bad, None, mentions))
        bad = copy.deepcopy(manifest)
        bad["adapters"][index] = "not an object"
        out.append((f"{where} a string", bad, None, where))
        files = manifest["adapters"][index]["files"]
        first = sorted(files)[0]
        for label, change in [
            ("wrong sha", lambda f, first=first: f[first].update(sha256="0" * 64)),
            ("wrong size", lambda f, first=first: f[first].update(size=f[first]["size"] + 1)),
            ("upper-case sha", lambda f, first=first: f[first].update(sha256=f[first]["sha256"].upper())),
            ("negative size", lambda f, first=first: f[first].update(size=-1)),
            ("size as text", lambda f, first=first: f[first].update(size=str(f[first]["size"]))),
            ("no sha", lambda f, first=first: f[first].pop("sha256")),
            ("no size", lambda f, first=first: f[first].pop("size")),
            ("file missing from manifest", lambda f, first=first: f.pop(first)),
            ("file missing from archive", lambda f: f.update({"extra.bin": {"sha256": "0" * 64, "size": 0}})),
        ]:
            bad = copy.deepcopy(manifest)
            change(bad["adapters"][index]["files"])
            out.append((f"{where}.files: {label}", bad, None, None))
    # Folders that overlap: twice the same, one inside another.
    bad = copy.deepcopy(manifest)
    bad["adapters"][1]["folder"] = bad["adapters"][0]["folder"]
    out.append(("two entries, one folder", bad, None, "overlaps"))
    bad = copy.deepcopy(manifest)
    bad["adapters"][2]["folder"] = bad["adapters"][2]["folder"] + "/second"
    out.append(("a folder inside another", bad, None, None))
    return out


def test_hostile_manifests_are_refused_naming_the_field(source, corpus_on_each_backend):
    corpus = corpus_on_each_backend
    mutations = _manifest_mutations(source["manifest"])
    rng = random.Random(SEED)
    for label, manifest, raw, mentions in mutations:
        gz = rng.random() < 0.3
        reseal = not label.startswith(("no sha256", "sha256="))  # those test the self-checksum field itself
        corpus.refuse(_with_manifest(source, manifest, raw=raw, gz=gz, reseal=reseal), gz, ArchiveError, label,
                      mentions=mentions)
    # A manifest edited (or damaged) without its self-checksum: refused as corrupt.
    edited = copy.deepcopy(source["manifest"])
    edited["adapters"][0]["name"] = "renamed"
    corpus.refuse(_with_manifest(source, edited, reseal=False), False, CorruptArchiveError, "stale self-checksum")
    # A folder whose files match the manifest but are not an adapter (bad entry in the middle).
    members = _members(source)
    manifest = copy.deepcopy(source["manifest"])
    middle = manifest["adapters"][1]
    garbage = b"\x00" * 64
    for i, (info, _) in enumerate(members):
        if info.name == f"{middle['folder']}/adapter_model.safetensors":
            members[i] = _file(info.name, garbage)
    middle["files"]["adapter_model.safetensors"] = {"sha256": hashlib.sha256(garbage).hexdigest(), "size": 64}
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    members[0] = _file(MANIFEST, json.dumps({**body, "sha256": _canonical_sha256(body)}).encode())
    corpus.refuse(_pack(members, False), False, CorruptArchiveError, "a middle entry that is not an adapter",
                  mentions=middle["folder"])
    corpus.report("manifest")
    assert corpus.tried == corpus.refused == len(mutations) + 2 and corpus.changed == 0
    assert corpus.errors.get("ArchiveManifestError", 0) > len(mutations) // 2


def test_the_unchanged_corpus_source_imports(source, corpus_on_each_backend):
    corpus = corpus_on_each_backend
    """The control: the archive every corpus item is made from imports, whole."""
    path = corpus.archive_dir / "good.tar"
    for key in ("tar", "gz"):
        path.write_bytes(source[key])
        records = corpus.store.import_(path)
        assert [r.name for r in records] == ["a", "a", "org/b"]
    assert corpus.store.verify().ok


def test_cli_prints_one_line_for_a_refused_archive(source, tmp_path, capsys):
    from adapterkit.cli.store_commands import main as store_main

    path = tmp_path / "cut.tar.gz"
    path.write_bytes(source["gz"][: len(source["gz"]) // 2])
    code = store_main(["store", "--root", str(tmp_path / "s"), "import", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "truncated or damaged" in err
    assert isinstance(ArchiveManifestError("x"), ArchiveError)
