"""Errors raised while finding or loading a base model."""

from __future__ import annotations

from adapterkit.errors import AdapterError


class BaseModelNotFoundError(AdapterError, FileNotFoundError):
    """The base model named is neither a built-in name, a local folder, nor installed."""


class HubUnreachableError(AdapterError, OSError):
    """A hub id was given, the Hugging Face Hub cannot be reached, and no local copy exists."""


class QuantizationUnavailableError(AdapterError, ValueError):
    """load_base(quantization=...) names an unknown scheme, or bitsandbytes is not installed."""
