"""Check an adapter folder against a base model and list every problem, not just the first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from adapterkit.core.targeting import find_targets
from adapterkit.errors import AdapterError
from adapterkit.io.fingerprint import BaseFingerprint, base_fingerprint
from adapterkit.io.folder import read_adapter_folder
from adapterkit.model.loading import check_tensors, resolve_saved_modules


@dataclass
class VerifyReport:
    folder: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_adapter(folder: str | Path, model: nn.Module) -> VerifyReport:
    """Everything that would stop (or silently spoil) loading `folder` onto `model`."""
    report = VerifyReport(str(folder))
    try:
        files = read_adapter_folder(folder)
        files.config.check_supported()
        targets = find_targets(model, files.config)
        saved = resolve_saved_modules(model, files.config)
    except AdapterError as exc:
        report.problems.append(str(exc))
        return report
    check = check_tensors(model, files.config, files.tensors, targets, saved)
    report.problems += [f"unexpected key {key}: no module of this base takes it" for key in check.unexpected]
    report.problems += [f"missing key {key}" for key in check.missing]
    report.problems += [f"{slot.module}: {key} has shape {list(files.tensors[key].shape)}, this base needs {list(shape)}"
                        for key, slot, shape in check.mismatched]
    misfits = {key for key, _, _ in check.mismatched}
    for key in check.expected:
        tensor = files.tensors.get(key)
        if tensor is None:
            continue
        report.checked_tensors += 1
        if key not in misfits and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            report.problems.append(f"{key} holds NaN or inf")
    recorded = BaseFingerprint.from_metadata(files.metadata)
    here = base_fingerprint(model)
    if recorded is None:
        report.warnings.append("no base fingerprint recorded (saved by PEFT or an older tool): base not checked")
    elif not here.matches(recorded):
        report.problems.append(f"trained on base {recorded.describe()}, but this base is {here.describe()}")
    return report
