"""Everything that knows transformers: finding, converting and caching base models."""

from adapterkit.hf.base_models import load_base
from adapterkit.hf.cache_dir import cache_root
from adapterkit.hf.errors import BaseModelNotFoundError, HubUnreachableError

__all__ = ["BaseModelNotFoundError", "HubUnreachableError", "cache_root", "load_base"]
