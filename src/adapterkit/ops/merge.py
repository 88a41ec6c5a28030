"""Export base + adapter as one plain transformers model folder."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from adapterkit.model.adapter_model import AdapterModel


def export_merged(model: AdapterModel, out: str | Path, tokenizer=None, adapter_names: list[str] | None = None,
                  safe_merge: bool = True) -> Path:
    """Merge the adapters (default: the active ones) and save a folder that
    transformers loads on its own. The AdapterModel is left unmerged and intact:
    the merge is undone after saving, so the adapter stays usable."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    names = adapter_names or list(model.active_adapters)
    base = model.get_base_model()
    model.merge_adapter(names, safe_merge=safe_merge, untie_weights=False)
    try:
        # Save the plain model: adapter children and hooks are not part of its state dict
        # keys transformers expects, so save the merged weights without them.
        state = {k: v for k, v in base.state_dict().items() if ".lora." not in f".{k}"}
        base.save_pretrained(staging, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    finally:
        model.unmerge_adapter()
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out
