"""Where adapterkit keeps converted base models, and how it writes them safely."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from adapterkit.paths import cache_root


def model_cache_dir(name: str) -> Path:
    return cache_root() / "models" / name


def write_folder_atomically(final: Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` on a temporary folder beside `final`, then rename it to `final`.

    A reader therefore sees either no folder or a complete one, even if this
    process dies half way. If another process finished first, its folder wins
    and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # Lost a race with another writer: theirs is complete, keep it.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = ["cache_root", "model_cache_dir", "write_folder_atomically"]
