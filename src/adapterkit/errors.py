"""Typed errors. Each names the thing that is wrong and how to fix it.

They subclass the built-in exception a caller would already catch
(`FileNotFoundError`, `ValueError`, `KeyError`), so code written against PEFT's
behaviour keeps working, and code written for adapterkit can be precise.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base of every adapterkit error."""


# --- files -----------------------------------------------------------------
class AdapterFolderNotFoundError(AdapterError, FileNotFoundError):
    """The adapter folder (or file) given does not exist."""


class AdapterConfigNotFoundError(AdapterError, FileNotFoundError):
    """The folder exists but holds no adapter_config.json."""


class AdapterWeightsNotFoundError(AdapterError, FileNotFoundError):
    """The folder holds a config but no adapter_model.safetensors / .bin."""


class CorruptAdapterFileError(AdapterError, ValueError):
    """A weights file is truncated, corrupt, or not what its name says."""


# --- configuration ---------------------------------------------------------
class AdapterConfigError(AdapterError, ValueError):
    """adapter_config.json or a LoraConfig is missing a field or holds a bad value."""


class UnsupportedAdapterError(AdapterConfigError):
    """The config asks for a method or option adapterkit does not implement."""


class TargetModulesError(AdapterError, ValueError):
    """target_modules matched nothing, or some of its entries matched nothing."""


# --- weights against the model --------------------------------------------
class AdapterShapeMismatchError(AdapterError, ValueError):
    """A tensor in the file does not fit the module it targets."""


class AdapterKeyMismatchError(AdapterError, ValueError):
    """The file holds keys the model does not expect, or lacks keys it needs."""


class BaseModelMismatchError(AdapterError, ValueError):
    """The adapter was trained on another base model (fingerprint differs)."""


# --- adapter bookkeeping ---------------------------------------------------
class AdapterExistsError(AdapterError, ValueError):
    """An adapter of that name is already loaded and holds trained weights."""


class UnknownAdapterError(AdapterError, ValueError, KeyError):
    """No adapter of that name is loaded."""

    # KeyError's str() wraps the message in quotes; keep it readable.
    __str__ = ValueError.__str__


class AdapterStateError(AdapterError, ValueError):
    """The operation does not fit the adapter's state (merged, training, tied weights)."""


class NaNInMergeError(AdapterStateError):
    """safe_merge found NaN or inf in a merged weight; nothing was changed."""


# --- hostile input: adapter names, files and values (hardening) -------------
class InvalidAdapterNameError(AdapterError, ValueError):
    """An adapter name that cannot be used (empty, with '.' or '/', reserved, not a string)."""


class AdapterFileUnreadableError(AdapterError, OSError):
    """An adapter file exists but cannot be opened (permissions, a broken link, an I/O error)."""


class AdapterDtypeError(AdapterError, ValueError):
    """A tensor in the adapter file is not floating point (int, bool, complex): casting would change it."""


class NonFiniteAdapterError(AdapterError, ValueError):
    """A tensor or a scale (lora_alpha, alpha_pattern) holds NaN or inf; `allow_nonfinite=True` accepts it."""


# --- variants: weighted combinations, hotswap, init variants ------------------
class AdapterCombinationError(AdapterError, ValueError):
    """add_weighted_adapter was given adapters, weights or options it cannot combine."""


class HotswapError(AdapterError, ValueError):
    """A folder cannot replace a loaded adapter's weights in place (nothing was changed)."""


class WeightConversionError(AdapterError, ValueError):
    """A PiSSA / OLoRA adapter cannot be converted to a plain LoRA against the initial folder given."""


# --- distributed training and vLLM deployment (scale) ------------------------
class DistributedTrainingError(AdapterError, ValueError):
    """A multi-process training run is set up wrongly (batch too small, ranks disagree, a failed write)."""


class VllmIncompatibleError(AdapterError, ValueError):
    """An adapter folder cannot be served by vLLM, and no lossless conversion makes it servable."""
# --- command line: generate, chat, eval, threads (cli) ------------------------
class AdapterSourceError(AdapterError, ValueError):
    """A --adapter value is neither an adapter folder nor a store ref (name, name@3, name@tag)."""


class SettingOutOfRangeError(AdapterError, ValueError):
    """A setting such as max tokens, temperature or the thread count is out of range."""
# --- core runtime (row ids, packs, routing) ----------------------------------
class AdapterCapacityError(AdapterError, ValueError):
    """A number of adapter slots that cannot be reserved (negative, or not an integer)."""


# --- variants2: quantized bases, module kinds ----------------------------------
class QuantizedMergeError(AdapterStateError):
    """A merge into a quantized (bitsandbytes) weight, refused: nothing was changed."""


# --- Ray Serve replicas (integrations/ray) ---------------------------------------
class RayServeOptionError(AdapterError, ValueError):
    """A Ray Serve deployment option (`adapterkit serve --replicas`, `serve run ... key=value`) is unusable."""
# --- offload: bases placed by device_map / offloaded by accelerate ---------------
class OffloadedWeightError(AdapterError, ValueError):
    """A base weight sits on the meta device and nothing says where its values are (no accelerate
    hook with a weights map on its module), or an operation needs a base tensor adapterkit cannot
    write through accelerate's offload (a trained bias, a modules_to_save copy): nothing was changed."""
