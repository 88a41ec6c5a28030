"""Convert a legacy adapter_model.bin to adapter_model.safetensors, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file

from adapterkit.errors import AdapterFolderNotFoundError, AdapterWeightsNotFoundError
from adapterkit.io.folder import (
    LEGACY_BIN_NAME,
    SAFETENSORS_NAME,
    adapter_subfolders,
    give_umask_mode,
    read_legacy_bin,
)


def convert_bin_to_safetensors(folder: str | Path, delete_bin: bool = False) -> Path:
    """Write `adapter_model.safetensors` beside `adapter_model.bin` (read with
    weights_only=True, so the pickle cannot run code). Returns the new file."""
    folder = Path(folder)
    source = folder / LEGACY_BIN_NAME
    if not source.is_file():
        raise AdapterWeightsNotFoundError(
            f"{folder} holds no {LEGACY_BIN_NAME} to convert"
            + (f" (it already has {SAFETENSORS_NAME})." if (folder / SAFETENSORS_NAME).exists() else ".")
        )
    tensors = {k: v.contiguous() for k, v in read_legacy_bin(source).items()}
    target = folder / SAFETENSORS_NAME
    partial = folder / f".{SAFETENSORS_NAME}.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    give_umask_mode(partial, like=source)  # save_file leaves 0600; readable by whoever could read the .bin
    os.replace(partial, target)
    if delete_bin:
        source.unlink()
    return target


def convert_folder(folder: str | Path, delete_bin: bool = False) -> list[Path]:
    """Convert the root adapter and every sub-folder adapter that still has a .bin."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterFolderNotFoundError(f"Adapter folder {folder} does not exist; pass the folder holding {LEGACY_BIN_NAME}.")
    candidates = [folder] + [folder / name for name in adapter_subfolders(folder)]
    todo = [c for c in candidates if (c / LEGACY_BIN_NAME).is_file()]
    if not todo:
        return [convert_bin_to_safetensors(folder, delete_bin)]  # raises with the reason
    return [convert_bin_to_safetensors(c, delete_bin) for c in todo]
