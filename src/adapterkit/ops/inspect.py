"""Describe an adapter folder without loading any model.

What can be checked without a model is checked (config fields, unsupported options, file format, tensor dtypes,
finite values and scales), by the same functions load_adapter uses; what needs a model
(keys, shapes, the base) is `adapterkit verify`'s job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapterkit.core.config import CONFIG_NAME
from adapterkit.core.variants import variant_of
from adapterkit.files import sha256_file
from adapterkit.io.fingerprint import BaseFingerprint
from adapterkit.io.folder import (
    adapter_subfolders,
    find_weights,
    read_adapter_folder,
)
from adapterkit.model.state import module_roles
from adapterkit.model.values import check_values


@dataclass
class AdapterFolderSummary:
    """What `adapterkit inspect` shows about one adapter folder (the store's AdapterSummary is
    the indexed subset it keeps per version)."""

    folder: str
    peft_type: str
    rank: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    variant: str  # the LoRA variant (core/variants.py): "lora", "dora"
    target_modules: list[str] | str | None
    modules_to_save: list[str] | None
    rank_pattern: dict
    alpha_pattern: dict
    adapted_modules: int
    parameters: int
    weights_file: str
    weights_bytes: int
    weights_sha256: str
    base_name: str | None
    base_fingerprint: str | None
    sub_adapters: list[AdapterFolderSummary] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_adapter(folder: str | Path, include_subfolders: bool = True,
                    allow_nonfinite: bool = False) -> AdapterFolderSummary:
    files = read_adapter_folder(folder)
    config = files.config
    config.check_supported()  # an adapter adapterkit cannot load is an error here too, not a description
    problems = check_values(config, files.tensors, allow_nonfinite).errors(
        str(files.weights_path), str(Path(folder) / CONFIG_NAME))
    if problems:
        raise problems[0]
    weights = find_weights(Path(folder))
    recorded = BaseFingerprint.from_metadata(files.metadata)
    # Keys read through the one mapping (io.keys), as load reads them: a module is adapted when it has a factor.
    modules = module_roles(files.tensors, set())
    summary = AdapterFolderSummary(
        folder=str(folder),
        peft_type=str(config.peft_type),
        rank=config.r,
        lora_alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
        use_dora=bool(config.use_dora),
        variant=variant_of(config).name,
        target_modules=config.target_modules,
        modules_to_save=config.modules_to_save,
        rank_pattern=config.rank_pattern,
        alpha_pattern=config.alpha_pattern,
        adapted_modules=len(modules),
        parameters=sum(t.numel() for t in files.tensors.values()),
        weights_file=weights.name,
        weights_bytes=weights.stat().st_size,
        weights_sha256=sha256_file(weights)[0],
        base_name=(recorded.name if recorded and recorded.name else None) or config.base_model_name_or_path,
        base_fingerprint=recorded.digest if recorded else None,
    )
    if include_subfolders:
        summary.sub_adapters = [inspect_adapter(Path(folder) / name, False, allow_nonfinite)
                                for name in adapter_subfolders(folder)]
    return summary
