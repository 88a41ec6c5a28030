"""Base-model fingerprints: which base an adapter was trained on.

Two bases of the same architecture and shapes (a chat variant and its base
variant, say) accept each other's adapters without any shape error, and the
outputs are quietly wrong. The fingerprint tells them apart: it hashes the
architecture, the shape of every module an adapter can target, and a fixed,
deterministic sample of the weights.

The same base loaded in float32, bfloat16 or float16 (as from a GGUF dequantised
to float32) must give the same fingerprint, so only the *sign bit* of each sampled
weight is hashed: rounding to nearest never changes a sign, in any of those types.
Any rounding of the values themselves would not do: whatever the grid, some values
sit near one of its boundaries, and converting to float16 first moves them across
it (rounding float32 to bfloat16 directly and through float16 disagrees on about
1 value in 16, so a sample of thousands always differed). A few thousand sign bits
still tell two bases apart, a chat variant from its base included: fine-tuning flips
the signs of the many weights near zero. Cost: a few thousand scalars read, whatever
the model size.

Fingerprints recorded before (bfloat16-rounded values, `legacy_digest`) still match
the same base loaded in the same dtype: see `BaseFingerprint.matches`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from adapterkit.core import placement
from adapterkit.core.kinds import CONV1D, LINEAR, QUANTIZED_LINEAR, kind_of, quantization_of

# Scalars sampled per parameter, and parameters sampled in all.
_SAMPLES_PER_TENSOR = 64
_MAX_TENSORS = 64
_ADAPTABLE = ("Linear", "Conv1D", "Embedding")


@dataclass(frozen=True)
class BaseFingerprint:
    architecture: str
    shapes_sha256: str
    weights_sha256: str
    name: str = ""
    legacy_digest: str = ""  # what this base's fingerprint was before signs were hashed
    # "" for a float base, else its bitsandbytes scheme ("nf4", "fp4+dq", "int8"; several joined by ",")
    quantization: str = ""
    # The sign sample of every parameter outside Linear / Conv1D weights (embeddings, norms,
    # biases): quantizing leaves those as they were, so a base and its quantized self share it.
    dense_sha256: str = ""

    def matches(self, recorded: BaseFingerprint) -> bool:
        """Is `recorded` (read from a file) this base's fingerprint, current or legacy, or the
        same base quantized differently (see `same_base_other_quantization`)?"""
        return recorded.digest in (self.digest, self.legacy_digest) or self.same_base_other_quantization(recorded)

    def same_base_other_quantization(self, recorded: BaseFingerprint) -> bool:
        """The same architecture, shapes and unquantized weights, quantized differently (an adapter
        trained with QLoRA on the nf4 base, loaded onto the float base, say)."""
        return (bool(self.dense_sha256) and recorded.dense_sha256 == self.dense_sha256
                and recorded.shapes_sha256 == self.shapes_sha256 and recorded.quantization != self.quantization)

    @property
    def digest(self) -> str:
        """One short string for both hashes: what stores and metadata compare."""
        return _digest(self.shapes_sha256, self.weights_sha256)

    def to_metadata(self) -> dict[str, str]:
        """Entries for a safetensors header (all values must be strings)."""
        return {
            "adapterkit.base.architecture": self.architecture,
            "adapterkit.base.fingerprint": self.digest,
            "adapterkit.base.shapes_sha256": self.shapes_sha256,
            "adapterkit.base.name": self.name,
            "adapterkit.base.quantization": self.quantization,
            "adapterkit.base.dense_sha256": self.dense_sha256,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None) -> BaseFingerprint | None:
        if not metadata or "adapterkit.base.fingerprint" not in metadata:
            return None
        return _RecordedFingerprint(
            architecture=metadata.get("adapterkit.base.architecture", ""),
            shapes_sha256=metadata.get("adapterkit.base.shapes_sha256", ""),
            weights_sha256="",
            name=metadata.get("adapterkit.base.name", ""),
            quantization=metadata.get("adapterkit.base.quantization", ""),
            dense_sha256=metadata.get("adapterkit.base.dense_sha256", ""),
            recorded_digest=metadata["adapterkit.base.fingerprint"],
        )

    def describe(self) -> str:
        label = self.name or "unnamed base"
        quantized = f", quantized {self.quantization}" if self.quantization else ""
        return f"{label} ({self.architecture}{quantized}, fingerprint {self.digest})"


@dataclass(frozen=True)
class _RecordedFingerprint(BaseFingerprint):
    """A fingerprint read back from a file: only its digest is known."""

    recorded_digest: str = ""

    @property
    def digest(self) -> str:
        return self.recorded_digest


def _digest(shapes_sha256: str, weights_sha256: str) -> str:
    return hashlib.sha256((shapes_sha256 + weights_sha256).encode()).hexdigest()[:32]


def _architecture(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None)
    if archs:
        return str(archs[0])
    return type(model).__name__


def _base_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or "")


def _sample(tensor: torch.Tensor) -> tuple[bytes, bytes]:
    """(sign bits, legacy bfloat16-rounded values) of a fixed sample of the tensor."""
    flat = tensor.detach().reshape(-1)
    count = min(_SAMPLES_PER_TENSOR, flat.numel())
    # Evenly spaced indices: deterministic, and they cover the whole tensor.
    # float64: in float32, numel - 1 rounds up past the end for tensors over 2**24 elements.
    index = torch.linspace(0, flat.numel() - 1, count, dtype=torch.float64, device=flat.device).long()
    values = flat.index_select(0, index)
    signs = torch.signbit(values).cpu().numpy().tobytes()
    legacy = values.to(torch.float32).to(torch.bfloat16).to(torch.float32).cpu().numpy().tobytes()
    return signs, legacy


def _readable(owners: dict[str, nn.Module], name: str, param: torch.Tensor) -> torch.Tensor | None:
    """`param`'s values, or None if it has none. A parameter accelerate offloaded (on meta between
    forwards) is read through its module's hook, so a base fingerprints the same offloaded or not."""
    if param.device.type != "meta":
        return param
    path, _, attr = name.rpartition(".")
    owner = owners.get(path)
    if owner is None or not placement.is_offloaded(owner, attr):
        return None
    return placement.tensor_values(owner, attr)


def _ties_lost_to_offload(model: nn.Module) -> set[str]:
    """Names of tied weights (transformers' `all_tied_weights_keys`, e.g. lm_head.weight -> the embeddings)
    that accelerate's cpu_offload / disk_offload turned into separate meta parameters. Resident, the tie is
    one parameter, listed once; left out here, the offloaded base lists the same parameters."""
    ties = getattr(model, "all_tied_weights_keys", None)
    if not isinstance(ties, dict) or not ties:
        return set()
    named = dict(model.named_parameters(remove_duplicate=False))
    return {tied for tied, source in ties.items()
            if tied in named and source in named and named[tied] is not named[source]
            and named[tied].device.type == "meta"}


def base_fingerprint(model: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> BaseFingerprint:
    """Fingerprint `model` as it is now (call it before merging any adapter).

    `skip_prefixes` leaves out parameters under those names (adapter weights
    already attached, for example).
    """
    shapes = hashlib.sha256()
    schemes: set[str] = set()
    matrix_weights: set[int] = set()  # ids of Linear / Conv1D weights, float or quantized
    packed_weights: set[int] = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        weight = getattr(module, "weight", None)
        module_kind = kind_of(module)
        if module_kind in (LINEAR, CONV1D, QUANTIZED_LINEAR) and isinstance(weight, torch.Tensor):
            matrix_weights.add(id(weight))
        if module_kind is QUANTIZED_LINEAR:
            # Its packed weight is left out of the weight sample: bitsandbytes repacks it in place
            # (for its CPU kernel, at the first eval forward), which would change the digest.
            packed_weights.add(id(weight))
            # Hashed as the float nn.Linear it quantizes, so both have one shape hash.
            schemes.add(quantization_of(module))
            shapes.update(json.dumps([name, "Linear", [module.out_features, module.in_features]]).encode())
        elif kind in _ADAPTABLE and isinstance(weight, torch.Tensor):
            shapes.update(json.dumps([name, kind, list(weight.shape)]).encode())
    weights, legacy = hashlib.sha256(), hashlib.sha256()
    untied = _ties_lost_to_offload(model)
    params = [
        (name, p)
        for name, p in model.named_parameters(remove_duplicate=True)
        if not any(name.startswith(prefix) for prefix in skip_prefixes) and p.numel() > 0
        and id(p) not in packed_weights and name not in untied
    ]
    params.sort(key=lambda item: item[0])
    owners = dict(model.named_modules())
    stride = max(1, len(params) // _MAX_TENSORS)
    for name, param in params[::stride]:
        values = _readable(owners, name, param)
        if values is None:
            continue
        signs, rounded = _sample(values)
        weights.update(name.encode())
        weights.update(signs)
        legacy.update(name.encode())
        legacy.update(rounded)
    dense = hashlib.sha256()
    for name, param in params:
        values = None if id(param) in matrix_weights else _readable(owners, name, param)
        if values is not None:
            dense.update(name.encode())
            dense.update(_sample(values)[0])
    shapes_sha256 = shapes.hexdigest()
    return BaseFingerprint(
        architecture=_architecture(model),
        shapes_sha256=shapes_sha256,
        weights_sha256=weights.hexdigest(),
        name=_base_name(model),
        legacy_digest=_digest(shapes_sha256, legacy.hexdigest()),
        quantization=",".join(sorted(schemes)),
        dense_sha256=dense.hexdigest(),
    )
