"""adapterkit: LoRA adapters on frozen models, in PEFT's file format.

Ported PEFT code changes only its import line:
    from adapterkit import LoraConfig, get_peft_model, PeftModel

Names are resolved on first use, so `import adapterkit` (and the CLI's store
commands) does not pay for importing torch until something needs it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "LoraConfig": "adapterkit.core.config",
    "AdapterModel": "adapterkit.model.adapter_model",
    "PeftModel": "adapterkit.model.adapter_model",
    "get_peft_model": "adapterkit.model.adapter_model",
    "BASE_ROW": "adapterkit.model.mixed",
    "BaseFingerprint": "adapterkit.io.fingerprint",
    "base_fingerprint": "adapterkit.io.fingerprint",
    "AdapterStore": "adapterkit.store",
    "load_base": "adapterkit.hf",
    "hotswap_adapter": "adapterkit.model.hotswap",
    "prepare_model_for_compiled_hotswap": "adapterkit.model.hotswap",
    **{
        name: "adapterkit.errors"
        for name in (
            "AdapterConfigError", "AdapterConfigNotFoundError", "AdapterError", "AdapterExistsError",
            "AdapterFolderNotFoundError", "AdapterKeyMismatchError", "AdapterShapeMismatchError",
            "AdapterStateError", "AdapterWeightsNotFoundError", "BaseModelMismatchError",
            "CorruptAdapterFileError", "NaNInMergeError", "TargetModulesError", "UnknownAdapterError",
            "UnsupportedAdapterError",
            "AdapterDtypeError", "AdapterFileUnreadableError", "InvalidAdapterNameError", "NonFiniteAdapterError",
        )
    },
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
