"""What an adapter folder holds, read without torch: config JSON + safetensors header.

A PEFT folder is `adapter_config.json` + `adapter_model.safetensors` (or `.bin`)
at its root, and possibly one sub-folder per further adapter laid out the same
way. The summary describes the root adapter (or the first sub-folder one when
the root holds none); parameter count and bytes cover every weights file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapterkit.errors import (
    AdapterConfigError,
    AdapterConfigNotFoundError,
    AdapterFolderNotFoundError,
    AdapterWeightsNotFoundError,
    CorruptAdapterFileError,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_FINGERPRINT_KEY = "adapterkit.base.fingerprint"
# A safetensors header above this is not a header: refuse rather than allocate it.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class BaseRef:
    """The base an adapter was trained on, as recorded in its weights file."""

    name: str
    fingerprint: str
    architecture: str = ""

    def describe(self) -> str:
        label = self.name or "unnamed base"
        arch = f"{self.architecture}, " if self.architecture else ""
        return f"{label} ({arch}fingerprint {self.fingerprint})"


@dataclass(frozen=True)
class AdapterSummary:
    method: str
    rank: int | None
    alpha: float | None
    targets: list[str] | str | None
    parameter_count: int
    bytes: int
    adapters: list[str] = field(default_factory=list)  # "" is the root adapter

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterSummary:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class FolderContents:
    files: dict[str, Path]  # relative POSIX path -> absolute path
    summary: AdapterSummary
    base: BaseRef | None


def read_folder(folder: str | os.PathLike[str]) -> FolderContents:
    """Every file of a PEFT folder, its summary, and the base recorded in it."""
    root = Path(folder)
    if not root.is_dir():
        raise AdapterFolderNotFoundError(f"adapter folder {root} does not exist (or is not a folder)")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise AdapterConfigError(f"{path} is a symbolic link; the store keeps regular files only")
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path
    # "" (the root) first, then sub-folders by name.
    adapter_dirs = sorted(
        {rel.rpartition("/")[0] for rel in files if rel.rpartition("/")[2] == CONFIG_NAME},
        key=lambda d: (d != "", d),
    )
    if not adapter_dirs:
        raise AdapterConfigNotFoundError(f"{root} holds no {CONFIG_NAME}; is it a PEFT adapter folder?")

    parameter_count = 0
    weight_bytes = 0
    base: BaseRef | None = None
    for adapter_dir in adapter_dirs:
        weights = [_join(adapter_dir, name) for name in WEIGHTS_NAMES if _join(adapter_dir, name) in files]
        if not weights:
            raise AdapterWeightsNotFoundError(
                f"{root / adapter_dir} holds {CONFIG_NAME} but no {' or '.join(WEIGHTS_NAMES)}"
            )
        for rel in weights:
            weight_bytes += files[rel].stat().st_size
            if rel.endswith(".safetensors"):
                count, metadata = read_safetensors_header(files[rel])
                parameter_count += count
                base = base or _base_from_metadata(metadata)

    config = _read_config(files[_join(adapter_dirs[0], CONFIG_NAME)])
    summary = AdapterSummary(
        method=str(config.get("peft_type") or "LORA").upper(),
        rank=_int_or_none(config.get("r")),
        alpha=_float_or_none(config.get("lora_alpha")),
        targets=_targets(config.get("target_modules")),
        parameter_count=parameter_count,
        bytes=weight_bytes,
        adapters=adapter_dirs,
    )
    return FolderContents(files=files, summary=summary, base=base)


def read_safetensors_header(path: Path) -> tuple[int, dict[str, str]]:
    """(parameter count, `__metadata__`) of a safetensors file, checking its layout."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptAdapterFileError(f"{path} is truncated: {size} bytes, no safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CorruptAdapterFileError(f"{path} is not a valid safetensors file (header length {header_len})")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptAdapterFileError(f"{path} has an unreadable safetensors header: {exc}") from None
    metadata = header.pop("__metadata__", None) or {}
    count = 0
    data_end = 0
    for name, info in header.items():
        try:
            numel = math.prod(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            expected = numel * _DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise CorruptAdapterFileError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if expected and end - begin != expected:
            raise CorruptAdapterFileError(f"{path}: tensor {name!r} spans {end - begin} bytes, expected {expected}")
        count += numel
        data_end = max(data_end, end)
    if 8 + header_len + data_end != size:
        raise CorruptAdapterFileError(
            f"{path} is truncated or padded: header promises {8 + header_len + data_end} bytes, file has {size}"
        )
    return count, {str(k): str(v) for k, v in metadata.items()}


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _base_from_metadata(metadata: dict[str, str]) -> BaseRef | None:
    if _FINGERPRINT_KEY not in metadata:
        return None
    # The fingerprint module owns the metadata contract; it imports torch, so only when needed.
    from adapterkit.io.fingerprint import BaseFingerprint

    recorded = BaseFingerprint.from_metadata(metadata)
    if recorded is None:
        return None
    return BaseRef(name=recorded.name, fingerprint=recorded.digest, architecture=recorded.architecture)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterConfigError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def _targets(value: object) -> list[str] | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set)):
        return sorted(str(v) for v in value)
    return str(value)


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
