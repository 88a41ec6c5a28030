"""adapterkit: LoRA adapters on frozen models, in PEFT's file format.

Ported PEFT code changes only its import line:
    from adapterkit import LoraConfig, get_peft_model, PeftModel
"""

from adapterkit.core.config import LoraConfig
from adapterkit.errors import (
    AdapterConfigError,
    AdapterConfigNotFoundError,
    AdapterError,
    AdapterExistsError,
    AdapterFolderNotFoundError,
    AdapterKeyMismatchError,
    AdapterShapeMismatchError,
    AdapterStateError,
    AdapterWeightsNotFoundError,
    BaseModelMismatchError,
    CorruptAdapterFileError,
    NaNInMergeError,
    TargetModulesError,
    UnknownAdapterError,
    UnsupportedAdapterError,
)
from adapterkit.io.fingerprint import BaseFingerprint, base_fingerprint
from adapterkit.model.adapter_model import AdapterModel, PeftModel, get_peft_model
from adapterkit.model.mixed import BASE_ROW

__version__ = "0.1.0"

__all__ = [
    "AdapterConfigError",
    "AdapterConfigNotFoundError",
    "AdapterError",
    "AdapterExistsError",
    "AdapterFolderNotFoundError",
    "AdapterKeyMismatchError",
    "AdapterModel",
    "AdapterShapeMismatchError",
    "AdapterStateError",
    "AdapterWeightsNotFoundError",
    "BASE_ROW",
    "BaseFingerprint",
    "BaseModelMismatchError",
    "CorruptAdapterFileError",
    "LoraConfig",
    "NaNInMergeError",
    "PeftModel",
    "TargetModulesError",
    "UnknownAdapterError",
    "UnsupportedAdapterError",
    "base_fingerprint",
    "get_peft_model",
]
