"""ServeConfig: a server's settings (no torch here, so the CLI checks them before loading anything)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def served_name(base: str) -> str:
    """The base's name in requests and /v1/models when none is given: a folder's name, else `base` itself."""
    path = Path(base).expanduser()
    return path.name if path.is_dir() else base


@dataclass
class ServeConfig:
    base_name: str  # what requests put in `model` for the base alone
    adapters: dict[str, str | Path] = field(default_factory=dict)  # loaded at start: NAME -> PEFT folder
    max_loras: int = 32
    max_batch: int = 16
    max_model_len: int = 1024
    max_queue: int = 256
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    base_root: str | None = None  # where the base came from, for /v1/models

    def check(self) -> None:
        for name, value, low in (("max_loras", self.max_loras, 1), ("max_batch", self.max_batch, 1),
                                 ("max_model_len", self.max_model_len, 2), ("max_queue", self.max_queue, 1),
                                 ("max_body_bytes", self.max_body_bytes, 1024)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a key, or leave the option out")
