"""A seeded generator of malformed adapter folders, and the harness that judges adapterkit on each.

Used by tests/model/test_malformed_adapters.py (which asserts every figure is zero) and by
`python -m bench.malformed_adapters` (which prints the figures). Families:

    truncation   the weights or the config cut short at seeded offsets
    header       safetensors headers that are corrupt, huge, lying about offsets, shapes or dtypes
    dtype        tensors stored as int, bool, complex (refused) or another float (loaded, cast)
    value        NaN / inf in tensors and scales (refused; loaded with allow_nonfinite=True)
    config-type  every config field x values of the wrong type, plus missing fields and raw bytes
    file-system  missing files, directories or FIFOs in place of files, symlinks, empty files
    name         adapter names that cannot be used, and some that can

Each variant says what a correct adapterkit does with it: "refuse" (a typed error), "load"
(the loaded tensors equal `expected`), or "either" (a typed error, or a load equal to `expected`).
The judge then checks, for every variant:
  - load_adapter (strict_base=True, like verify) raises an AdapterError, or loads correctly;
  - after a failure the model's state_dict, adapters, active set and modules are as before
    (and after a success, once the new adapter is deleted again);
  - `adapterkit verify` agrees with load_adapter, and `adapterkit inspect` fails exactly when
    the problem is visible without a model; every failing command prints one line on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.errors import (
    AdapterConfigError,
    AdapterConfigNotFoundError,
    AdapterDtypeError,
    AdapterError,
    AdapterFileUnreadableError,
    AdapterFolderNotFoundError,
    AdapterWeightsNotFoundError,
    CorruptAdapterFileError,
    NonFiniteAdapterError,
)
from helpers import randomize_adapter, save_tiny_base

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
GOOD = "good"  # the adapter already loaded in the judged model; a half-load would show next to it

# Errors visible without a model: `inspect` must fail on them too. (Targets, keys, shapes and the
# base need a model: inspect describes such folders.)
MODEL_FREE_ERRORS = (AdapterFolderNotFoundError, AdapterConfigNotFoundError, AdapterWeightsNotFoundError,
                     AdapterFileUnreadableError, CorruptAdapterFileError, AdapterDtypeError, NonFiniteAdapterError,
                     AdapterConfigError)


@dataclass
class Variant:
    family: str
    label: str
    folder: Path
    expect: str  # "refuse" | "load" | "either"
    expected: dict[str, torch.Tensor] | None = None  # the tensors a correct load holds
    adapter_name: Any = "new"
    load_kwargs: dict = field(default_factory=dict)
    cli_flags: list[str] = field(default_factory=list)
    # Whether `inspect` (no model) can see the problem; None: decided by the class of load's error.
    inspect_sees: bool | None = None


# --- the pristine adapter ------------------------------------------------------------
@dataclass
class Pristine:
    config: dict
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config_bytes: bytes
    weights_bytes: bytes


def make_pristine(root: Path) -> tuple[Path, Pristine]:
    """A tiny base folder (for --base) and a trained-looking adapter on it, with rank/alpha patterns."""
    base_dir = save_tiny_base(root / "base")
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 4}))
    randomize_adapter(model, seed=5)
    model.save_pretrained(root / "pristine")
    config_bytes = (root / "pristine" / CONFIG).read_bytes()
    weights_bytes = (root / "pristine" / WEIGHTS).read_bytes()
    from safetensors import safe_open

    with safe_open(str(root / "pristine" / WEIGHTS), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    return base_dir, Pristine(json.loads(config_bytes), tensors, metadata, config_bytes, weights_bytes)


# --- writing one variant ---------------------------------------------------------------
class Writer:
    def __init__(self, root: Path, pristine: Pristine) -> None:
        self.root, self.p, self.count = root, pristine, 0
        self.variants: list[Variant] = []

    def folder(self) -> Path:
        self.count += 1
        path = self.root / f"v{self.count:04d}"
        path.mkdir(parents=True)
        return path

    def add(self, family: str, label: str, expect: str, *, config: dict | bytes | None = None,
            tensors: dict | None = None, weights: bytes | None = None, expected=None, **extra) -> Variant:
        folder = self.folder()
        config_bytes = config if isinstance(config, bytes) else (
            self.p.config_bytes if config is None else json.dumps(config).encode())
        (folder / CONFIG).write_bytes(config_bytes)
        if weights is None:
            weights = self.p.weights_bytes if tensors is None else safetensors_bytes(tensors, self.p.metadata)
        (folder / WEIGHTS).write_bytes(weights)
        if expected is None and expect != "refuse":
            expected = self.p.tensors if tensors is None else tensors
        variant = Variant(family, label, folder, expect, expected, **extra)
        self.variants.append(variant)
        return variant


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _join_safetensors(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


# --- the families ------------------------------------------------------------------------
def truncation(w: Writer, rng: random.Random) -> None:
    data = w.p.weights_bytes
    (length,) = struct.unpack("<Q", data[:8])
    cuts = {0, 1, 4, 7, 8, 9, 8 + length // 2, 8 + length - 1, 8 + length, 8 + length + 1, len(data) - 1}
    cuts |= {rng.randrange(1, len(data)) for _ in range(24)}
    for cut in sorted(cuts):
        w.add("truncation", f"weights cut at byte {cut} of {len(data)}", "refuse", weights=data[:cut])
    text = w.p.config_bytes
    for cut in sorted({0, 1, len(text) // 3, len(text) // 2, len(text) - 2} | {rng.randrange(1, len(text) - 1)
                                                                                  for _ in range(6)}):
        w.add("truncation", f"config cut at byte {cut} of {len(text)}", "refuse", config=text[:cut])
    w.add("truncation", "weights with 16 junk bytes appended", "either", weights=data + b"\x00" * 16)


def header(w: Writer, rng: random.Random) -> None:
    data = w.p.weights_bytes
    head, body = _split_safetensors(data)
    names = sorted(k for k in head if k != "__metadata__")
    raw_head = data[8:8 + struct.unpack("<Q", data[:8])[0]]
    # The length field lies.
    for size in (0, 1, 2, len(raw_head) - 1, len(raw_head) + 1, len(data), 1 << 27, (1 << 64) - 1):
        w.add("header", f"header length field says {size}", "refuse",
              weights=struct.pack("<Q", size) + data[8:])
    # The header is not a JSON object of tensors.
    for text in (b"{{{", b"[]", b'"x"', b"null", b"1", b'{"a": 1}', b"\xff\xfe" + raw_head[2:],
                 raw_head.replace(b"{", b"[", 1)):
        w.add("header", f"header text {text[:16]!r}", "refuse", weights=_join_safetensors(text, body))
    w.add("header", "no tensors at all", "refuse", weights=_join_safetensors({"__metadata__": head["__metadata__"]}, b""))
    w.add("header", "header padded with spaces (valid)", "load", weights=_join_safetensors(raw_head + b"   ", body))

    def edited(name: str, label: str, change, expect: str = "refuse") -> None:
        new = copy.deepcopy(head)
        change(new[name])
        w.add("header", f"{name.split('model.model.')[-1]}: {label}", expect, weights=_join_safetensors(new, body))

    for name in rng.sample(names, 4):
        start, end = head[name]["data_offsets"]
        for label, offsets in (("offsets reversed", [end, start]), ("offsets past the end", [start, len(body) + 64]),
                               ("offsets shifted by 4", [start + 4, end + 4]),
                               ("offsets overlap the previous tensor", [max(0, start - 8), end - 8]),
                               ("offsets are strings", [str(start), str(end)])):
            edited(name, label, lambda e, o=offsets: e.update(data_offsets=o))
        edited(name, "offsets missing", lambda e: e.pop("data_offsets"))
        edited(name, "shape with a negative size", lambda e: e.update(shape=[-1, *e["shape"][1:]]))
        edited(name, "shape of 2**40 x 2**40", lambda e: e.update(shape=[1 << 40, 1 << 40]))
        edited(name, "shape transposed (bytes fit)", lambda e: e.update(shape=e["shape"][::-1]), "refuse")
        edited(name, "shape flattened (bytes fit)", lambda e: e.update(shape=[e["shape"][0] * e["shape"][1]]), "refuse")
        edited(name, "dtype 'XX'", lambda e: e.update(dtype="XX"))
        edited(name, "dtype F64 over F32 bytes", lambda e: e.update(dtype="F64"))
        edited(name, "dtype I32 over F32 bytes", lambda e: e.update(dtype="I32"))
        edited(name, "dtype missing", lambda e: e.pop("dtype"))
    for label, meta in (("metadata is a list", [1]), ("metadata value is a number", {"format": 1}),
                        ("metadata is a string", "pt")):
        new = copy.deepcopy(head)
        new["__metadata__"] = meta
        w.add("header", label, "refuse", weights=_join_safetensors(new, body))
    other = dict(head["__metadata__"], **{"adapterkit.base.fingerprint": "0" * 32})
    w.add("header", "recorded base fingerprint of another base", "refuse",
          weights=_join_safetensors(dict(head, __metadata__=other), body))


def dtype(w: Writer, rng: random.Random) -> None:
    names = sorted(w.p.tensors)
    refused = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]
    for kind in refused:
        for name in (names[0], names[-1], rng.choice(names)):  # the last layer: a half-load would show
            tensors = dict(w.p.tensors)
            tensors[name] = (tensors[name] * 10).to(kind)
            w.add("dtype", f"{name.split('model.model.')[-1]} as {kind}", "refuse", tensors=tensors)
    for kind in (torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn):
        tensors = {k: v.to(kind) for k, v in w.p.tensors.items()}
        expected = {k: v.float() for k, v in tensors.items()}  # what a correct load holds: the stored values
        w.add("dtype", f"every tensor as {kind}", "load", tensors=tensors, expected=expected)


def value(w: Writer, rng: random.Random) -> None:
    names = sorted(w.p.tensors)
    for name in names:
        for bad in (float("nan"), float("inf"), float("-inf")):
            tensors = dict(w.p.tensors)
            poisoned = tensors[name].clone()
            poisoned.view(-1)[rng.randrange(poisoned.numel())] = bad
            tensors[name] = poisoned
            short = name.split("model.model.")[-1]
            w.add("value", f"{short} holds {bad}", "refuse", tensors=tensors)
            if bad != bad:  # NaN: the opt-out loads it, values as stored
                w.add("value", f"{short} holds nan, allow_nonfinite", "load", tensors=tensors,
                      load_kwargs={"allow_nonfinite": True}, cli_flags=["--allow-nonfinite"])
    for field_name, bad in (("lora_alpha", "NaN"), ("lora_alpha", "Infinity"), ("lora_alpha", "-Infinity")):
        text = w.p.config_bytes.replace(b'"lora_alpha": 8', f'"lora_alpha": {bad}'.encode())
        assert text != w.p.config_bytes
        w.add("value", f"{field_name} = {bad}", "refuse", config=text)
        w.add("value", f"{field_name} = {bad}, allow_nonfinite", "load", config=text,
              load_kwargs={"allow_nonfinite": True}, cli_flags=["--allow-nonfinite"])
    for bad in ("NaN", "Infinity"):
        text = w.p.config_bytes.replace(b'"v_proj": 4', f'"v_proj": {bad}'.encode())
        assert text != w.p.config_bytes
        w.add("value", f"alpha_pattern value {bad}", "refuse", config=text)
    tensors = {k: v * 1e30 for k, v in w.p.tensors.items()}  # huge but finite: the adapter's own business
    w.add("value", "every value times 1e30", "load", tensors=tensors)
    for name in (names[0], names[-1]):  # finite in float64, inf in the model's float32
        tensors = dict(w.p.tensors)
        tensors[name] = tensors[name].double() * 1e300
        w.add("value", f"{name.split('model.model.')[-1]} times 1e300 in float64", "refuse", tensors=tensors,
              inspect_sees=False)  # too large for the model's dtype: only a model knows its dtype


# Per field, the JSON types PEFT's schema allows (an independent statement of the contract):
# a value of another type must be refused; a value of an allowed type may load or be refused.
ALLOWED = {
    "r": (int,), "lora_alpha": (int, float), "target_modules": (list, str, type(None)),
    "exclude_modules": (list, str, type(None)), "lora_dropout": (int, float), "fan_in_fan_out": (bool,),
    "bias": (str,), "use_rslora": (bool,), "modules_to_save": (list, type(None)),
    "init_lora_weights": (bool, str), "layers_to_transform": (int, list, type(None)),
    "layers_pattern": (str, list, type(None)), "rank_pattern": (dict,), "alpha_pattern": (dict,),
    "task_type": (str, type(None)), "inference_mode": (bool,), "base_model_name_or_path": (str, type(None)),
    "revision": (str, type(None)), "peft_type": (str,), "use_dora": (bool,), "lora_bias": (bool,),
    "use_qalora": (bool,), "layer_replication": (list, type(None)), "target_parameters": (list, type(None)),
}
# Raw JSON values; the last few are not even parseable as ordinary Python values.
WRONG_VALUES = ['"abc"', "null", "[]", "[1, 2]", '["q_proj", 3]', "{}", '{"q_proj": "x"}', "true", "-1", "0",
                "2.5", "1e400", '"("', '[["deep", ["er"]]]', "9" * 5000, "[" * 100_000 + "]" * 100_000,
                '"\xff\xfe"']


def _is_allowed(field_name: str, raw: str) -> bool:
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    kinds = ALLOWED[field_name]
    if isinstance(parsed, bool):
        return bool in kinds
    if isinstance(parsed, float) and not math.isfinite(parsed):
        return False
    return isinstance(parsed, kinds)


def config_type(w: Writer, rng: random.Random) -> None:
    template = json.dumps({k: v for k, v in w.p.config.items()})
    for field_name in ALLOWED:
        for raw in WRONG_VALUES:
            data = json.loads(template)
            data[field_name] = "\x00PLACEHOLDER\x00"
            text = json.dumps(data).replace('"\\u0000PLACEHOLDER\\u0000"', raw)
            payload = text.encode("latin-1") if raw.startswith('"\xff') else text.encode()
            expect = "either" if _is_allowed(field_name, raw) else "refuse"
            w.add("config-type", f"{field_name} = {raw[:24]}", expect, config=payload)
    for missing in ("r", "lora_alpha", "peft_type"):
        w.add("config-type", f"{missing} missing", "refuse", config={k: v for k, v in w.p.config.items() if k != missing})
    for label, extra in (("an unknown field", {"some_future_option": 1}), ("peft_version 9.9", {"peft_version": "9.9"})):
        w.add("config-type", label, "load", config=dict(w.p.config, **extra))
    for label, text in (("config is a JSON list", b"[]"), ("config is not UTF-8", b"\xff\xfe{}"),
                        ("config has a UTF-8 BOM", b"\xef\xbb\xbf" + w.p.config_bytes),
                        ("config is 100,000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)):
        w.add("config-type", label, "refuse", config=text)
    # Fields that remove every target: the error must name them (checked in the unit tests); here,
    # that they are typed and atomic.
    for label, edit in (("layers_to_transform [7]", {"layers_to_transform": [7]}),
                        ("exclude_modules removes all", {"exclude_modules": ["q_proj", "v_proj"]}),
                        ("layers_pattern matching nothing", {"layers_to_transform": [0], "layers_pattern": "blocks"})):
        w.add("config-type", label, "refuse", config=dict(w.p.config, **edit))


def file_system(w: Writer, rng: random.Random) -> None:
    p = w.p

    def variant(label: str, expect: str, build) -> None:
        v = w.add("file-system", label, expect)
        build(v.folder)

    def replace_with_dir(path: Path) -> None:
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("x")

    def replace_with_link(path: Path, target: str) -> None:
        path.unlink()
        path.symlink_to(target)

    def replace_with_fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    variant("config missing", "refuse", lambda f: (f / CONFIG).unlink())
    variant("weights missing", "refuse", lambda f: (f / WEIGHTS).unlink())
    variant("both missing", "refuse", lambda f: ((f / CONFIG).unlink(), (f / WEIGHTS).unlink()))
    variant("config is a directory", "refuse", lambda f: replace_with_dir(f / CONFIG))
    variant("weights is a directory", "refuse", lambda f: replace_with_dir(f / WEIGHTS))
    variant("config is a FIFO", "refuse", lambda f: replace_with_fifo(f / CONFIG))
    variant("weights is a FIFO", "refuse", lambda f: replace_with_fifo(f / WEIGHTS))
    variant("config is a dangling symlink", "refuse", lambda f: replace_with_link(f / CONFIG, "nowhere.json"))
    variant("weights is a dangling symlink", "refuse", lambda f: replace_with_link(f / WEIGHTS, "nowhere"))
    variant("config is a symlink loop", "refuse", lambda f: replace_with_link(f / CONFIG, CONFIG))
    variant("weights is a symlink loop", "refuse", lambda f: replace_with_link(f / WEIGHTS, WEIGHTS))

    def linked(f: Path) -> None:
        for name in (CONFIG, WEIGHTS):
            (f / ("real-" + name)).write_bytes((f / name).read_bytes())
            replace_with_link(f / name, "real-" + name)
    variant("both files are symlinks to real files", "load", linked)
    variant("config is empty", "refuse", lambda f: (f / CONFIG).write_bytes(b""))
    variant("weights is empty", "refuse", lambda f: (f / WEIGHTS).write_bytes(b""))
    # Root reads anything, so an unreadable file may still load: either outcome, but typed.
    variant("config mode 000", "either", lambda f: os.chmod(f / CONFIG, 0))
    variant("weights mode 000", "either", lambda f: os.chmod(f / WEIGHTS, 0))

    def legacy(f: Path, corrupt: bool = False, keep_safetensors: bool = False) -> None:
        buffer = io.BytesIO()
        torch.save(dict(p.tensors), buffer)
        data = buffer.getvalue()
        (f / "adapter_model.bin").write_bytes(data[: len(data) // 2] if corrupt else data)
        if not keep_safetensors:
            (f / WEIGHTS).unlink()
    variant("legacy .bin only", "either", legacy)  # no fingerprint: loads, unchecked base
    variant("legacy .bin truncated", "refuse", lambda f: legacy(f, corrupt=True))
    variant("truncated safetensors beside a good .bin", "refuse",
            lambda f: (legacy(f, keep_safetensors=True), (f / WEIGHTS).write_bytes(p.weights_bytes[:50])))
    for label in ("not there", "a file", "a dangling symlink"):
        v = Variant("file-system", f"the folder is {label}", w.root / f"v{w.count + 1:04d}-{label.replace(' ', '-')}",
                    "refuse")
        w.count += 1
        if label == "a file":
            v.folder.write_text("x")
        elif label == "a dangling symlink":
            v.folder.symlink_to(w.root / "nowhere")
        w.variants.append(v)
    odd = w.root / "odd name ü [x] (1)"
    odd.mkdir()
    for name in (CONFIG, WEIGHTS):
        (odd / name).write_bytes(getattr(p, "config_bytes" if name == CONFIG else "weights_bytes"))
    w.variants.append(Variant("file-system", "folder name with spaces, brackets, non-ASCII", odd, "load", p.tensors))


def name(w: Writer, rng: random.Random) -> None:
    bad_names = ["", ".", "a.b", "a/b", "a\\b", "__base__", None, 123, ["x"], "a\x00b", "a\nb", "x" * 300, "\ud800",
                 GOOD]
    for bad in bad_names:
        w.add("name", f"adapter name {bad!r:.30}", "refuse", adapter_name=bad)
    for fine in ("ü名前", "with space", "UPPER_lower-123", "x" * 200):
        w.add("name", f"adapter name {fine!r:.30}", "load", adapter_name=fine)


FAMILIES = (truncation, header, dtype, value, config_type, file_system, name)


def generate(root: Path, pristine: Pristine, seed: int = 0) -> list[Variant]:
    rng = random.Random(seed)
    writer = Writer(root / "variants", pristine)
    for family in FAMILIES:
        family(writer, rng)
    # Every third refusal is tried as an overwrite of the loaded adapter: a failed overwrite must keep it.
    for i, v in enumerate(writer.variants):
        if v.expect == "refuse" and v.family != "name" and i % 3 == 0:
            v.adapter_name = GOOD
            v.load_kwargs = dict(v.load_kwargs, overwrite=True)
    return writer.variants


# --- the judge ---------------------------------------------------------------------------
def snapshot(model: AdapterModel) -> tuple:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, sorted(model.peft_config),
            list(model.active_adapters), [n for n, _ in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()})


def same_state(a: tuple, b: tuple) -> bool:
    tensors_a, *rest_a = a
    tensors_b, *rest_b = b
    return (rest_a == rest_b and tensors_a.keys() == tensors_b.keys()
            and all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a))


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float().nan_to_num(), b.float().nan_to_num()) \
        and torch.equal(a.float().isnan(), b.float().isnan())


@dataclass
class Figures:
    variants: int = 0
    untyped_errors: int = 0
    state_changes: int = 0
    silent_bad_loads: int = 0  # a variant that must be refused loaded
    wrong_loads: int = 0  # loaded, but the tensors differ from what the file means
    verify_disagrees: int = 0  # verify's verdict differs from load_adapter's
    inspect_wrong: int = 0  # inspect failed on a model-free-valid folder, or passed a model-free-invalid one
    cli_not_one_line: int = 0  # a failing command printed other than exactly one stderr line
    by_family: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def record(self, kind: str, variant: Variant, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.failures.append(f"[{variant.family}] {variant.label}: {kind}: {detail}")

    def summary(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("variants", "untyped_errors", "state_changes", "silent_bad_loads",
                                              "wrong_loads", "verify_disagrees", "inspect_wrong", "cli_not_one_line")}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`adapterkit ARGV` in this process: (exit code, stdout, stderr). An exception escaping main
    is a traceback for the user: returned as exit code -1 with the exception in stderr."""
    from adapterkit.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - the point is to see anything that escapes
            return -1, out.getvalue(), f"Traceback: {type(exc).__name__}: {exc}"
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def base_loaded_once(base_dir: Path):
    """`adapterkit verify --base DIR` loads the base for every call (~50 ms); for hundreds of variants
    the real load_base runs once and each call gets a fresh deep copy of its model."""
    import adapterkit.hf as hf

    real = hf.load_base
    model, tokenizer = real(base_dir)

    def load_base(name_or_path, *args, **kwargs):
        if Path(str(name_or_path)) == Path(base_dir):
            return copy.deepcopy(model), tokenizer
        return real(name_or_path, *args, **kwargs)

    hf.load_base = load_base
    try:
        yield model
    finally:
        hf.load_base = real


def judged_model(base_dir: Path, pristine_dir: Path) -> AdapterModel:
    from transformers import AutoModelForCausalLM

    return AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), pristine_dir,
                                        adapter_name=GOOD)


class Judge:
    """Judges variants one after another on one model that carries the adapter GOOD."""

    def __init__(self, base_dir: Path, pristine_dir: Path) -> None:
        self.base_dir, self.pristine_dir = base_dir, pristine_dir
        self.figures = Figures()
        self._fresh_model()

    def _fresh_model(self) -> None:
        self.model = judged_model(self.base_dir, self.pristine_dir)
        self.before = snapshot(self.model)

    def __call__(self, variant: Variant) -> None:
        import warnings

        figures, model = self.figures, self.model
        figures.variants += 1
        figures.by_family[variant.family] += 1
        error: BaseException | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.load_adapter(variant.folder, adapter_name=variant.adapter_name, strict_base=True,
                                   **variant.load_kwargs)
            except AdapterError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001
                error = exc
                figures.record("untyped_errors", variant, f"{type(exc).__name__}: {exc}"[:300])
        if error is None:
            self._check_load(variant)
        if not same_state(self.before, snapshot(model)):
            figures.record("state_changes", variant, f"after {type(error).__name__ if error else 'load + delete'}")
            self._fresh_model()  # judge the next variant on a clean model
        if variant.family == "name":
            return  # a name is no business of a folder: the folder itself is pristine
        folder = str(variant.folder)
        code, _, err = run_cli(["verify", folder, "--base", str(self.base_dir), *variant.cli_flags])
        _judge_cli(variant, figures, "verify", code, err, should_fail=error is not None)
        inspect_should_fail = variant.inspect_sees if variant.inspect_sees is not None else (
            isinstance(error, MODEL_FREE_ERRORS))
        code, _, err = run_cli(["inspect", folder, "--json", *variant.cli_flags])
        _judge_cli(variant, figures, "inspect", code, err, should_fail=inspect_should_fail)

    def _check_load(self, variant: Variant) -> None:
        """The variant loaded: it must have been allowed to, and hold what the file means. Then
        undo the load (reloading GOOD if the variant replaced it) for the next variant."""
        model, name = self.model, variant.adapter_name
        if variant.expect == "refuse":
            self.figures.record("silent_bad_loads", variant, "loaded")
        elif variant.expected is not None:
            loaded = model.adapter_state_dict(name)
            wrong = [k for k, t in variant.expected.items() if k not in loaded or not _equal(loaded[k], t)]
            if wrong or loaded.keys() != variant.expected.keys():
                self.figures.record("wrong_loads", variant, f"differs at {wrong[:2]}")
        model.delete_adapter(name)
        if name == GOOD:
            model.load_adapter(self.pristine_dir, adapter_name=GOOD)
        model.set_adapter(GOOD)


def _judge_cli(variant: Variant, figures: Figures, command: str, code: int, err: str, should_fail: bool) -> None:
    if code == -1:
        figures.record("untyped_errors", variant, f"{command}: {err}"[:300])
        return
    if (code != 0) != should_fail:
        kind = "verify_disagrees" if command == "verify" else "inspect_wrong"
        figures.record(kind, variant, f"{command} exit {code}, expected {'failure' if should_fail else 'success'}: "
                                      f"{err.strip()[:200]}")
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        if len(lines) != 1 or "Traceback" in err:
            figures.record("cli_not_one_line", variant, f"{command} stderr: {err[:300]!r}")


def run_all(root: Path, seed: int = 0) -> Figures:
    """Generate every variant under `root` and judge each; returns the figures."""
    base_dir, pristine = make_pristine(root)
    variants = generate(root, pristine, seed)
    judge = Judge(base_dir, root / "pristine")
    with base_loaded_once(base_dir):
        for variant in variants:
            judge(variant)
    return judge.figures
