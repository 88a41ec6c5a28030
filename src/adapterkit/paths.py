"""Where adapterkit keeps things on disk (stdlib only): one owner for the cache root."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$ADAPTERKIT_HOME`, else `$XDG_CACHE_HOME/adapterkit`, else `~/.cache/adapterkit`.

    Converted base models live under `models/`, the adapter store under `store/`.
    """
    if home := os.environ.get("ADAPTERKIT_HOME"):
        return Path(home).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "adapterkit"
    return Path.home() / ".cache" / "adapterkit"
